"""The socket-free DNS responder: answers, truncation, EDNS, malformed input, shuffle."""

from __future__ import annotations

import random
import struct

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.core.dns_zone import Zone
from simulator.net.peers.dns import DnsResponder, DnsTransport
from tests.dns.conftest import BIG_NAME, BIG_NAME_ADDRESSES, POOL_NODES


def make_query(name: str, qtype: str = "A", *, edns_payload: int | None = None) -> dns.message.Message:
    """A query for (``name``, ``qtype``) with RD set; with ``edns_payload``, an EDNS0 OPT advertising it."""
    return dns.message.make_query(name, qtype, use_edns=edns_payload is not None, payload=edns_payload)


def exchange(responder: DnsResponder, query: dns.message.Message,
             transport: DnsTransport = DnsTransport.UDP) -> tuple[bytes, dns.message.Message]:
    """The raw response to ``query`` and its parse; the response must carry the query's ID and QR."""
    raw = responder.respond(query.to_wire(), transport)
    assert raw is not None
    response = dns.message.from_wire(raw)
    assert response.id == query.id
    assert response.flags & dns.flags.QR
    return raw, response


def ask(responder: DnsResponder, name: str, qtype: str = "A", *, transport: DnsTransport = DnsTransport.UDP,
        edns_payload: int | None = None) -> dns.message.Message:
    return exchange(responder, make_query(name, qtype, edns_payload=edns_payload), transport)[1]


def addresses(response: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rdata in rrset]


def test_answers_all_pool_nodes_authoritatively(lab_zone: Zone) -> None:
    response = ask(DnsResponder(lab_zone), "sip.contoso.com")
    assert response.flags & dns.flags.AA
    assert response.rcode() == dns.rcode.NOERROR
    assert addresses(response) == POOL_NODES


def test_srv_answer_with_additional_a_records(lab_zone: Zone) -> None:
    response = ask(DnsResponder(lab_zone), "_xmpp-server._tcp.contoso.com", "SRV")
    (srv_rrset,) = response.answer
    (srv,) = srv_rrset
    assert (srv.priority, srv.weight, srv.port, srv.target.to_text()) == (0, 0, 5269, "sip.contoso.com.")
    assert [rdata.address for rrset in response.additional for rdata in rrset] == POOL_NODES


def test_nxdomain_and_nodata_rcodes(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    assert ask(responder, "missing.contoso.com").rcode() == dns.rcode.NXDOMAIN
    nodata = ask(responder, "sip.contoso.com", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR
    assert nodata.answer == []
    assert responder.counters.responses_by_rcode == {"NXDOMAIN": 1, "NOERROR": 1}


def test_large_answer_is_truncated_at_512_without_edns(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    raw, response = exchange(responder, make_query(BIG_NAME, "A"))
    assert len(raw) <= 512
    assert response.flags & dns.flags.TC
    kept = addresses(response)
    assert 0 < len(kept) < len(BIG_NAME_ADDRESSES)
    assert kept == BIG_NAME_ADDRESSES[: len(kept)]  # whole RRs only, in order
    assert responder.counters.truncated == 1


def test_large_answer_is_whole_over_tcp(lab_zone: Zone) -> None:
    response = ask(DnsResponder(lab_zone), BIG_NAME, transport=DnsTransport.TCP)
    assert not response.flags & dns.flags.TC
    assert addresses(response) == BIG_NAME_ADDRESSES


def test_answer_too_big_for_tcp_is_truncated_at_65535() -> None:
    # RFC 1035 §4.2.2: the TCP length prefix is 16 bits; ~16 octets per compressed A RR → 4200 do not fit.
    records: list[dict[str, object]] = [
        {"name": "huge.example.com", "type": "A", "value": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"}
        for i in range(1, 4201)
    ]
    responder = DnsResponder(Zone.from_records(records))
    raw, response = exchange(responder, make_query("huge.example.com"), DnsTransport.TCP)
    assert len(raw) <= 65535
    assert response.flags & dns.flags.TC
    assert 4000 < len(addresses(response)) < 4200
    assert responder.counters.truncated == 1


def test_edns_payload_size_is_honoured_and_echoed(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone, max_udp_payload=1232)
    roomy = ask(responder, BIG_NAME, edns_payload=1232)  # 60 × 16 octets fits in 1232
    assert not roomy.flags & dns.flags.TC
    assert addresses(roomy) == BIG_NAME_ADDRESSES
    assert (roomy.edns, roomy.payload) == (0, 1232)  # our OPT: EDNS version 0, our payload size
    raw, tight = exchange(responder, make_query(BIG_NAME, edns_payload=600))
    assert tight.flags & dns.flags.TC
    assert len(raw) <= 600
    assert tight.edns == 0  # RFC 6891 §7: OPT kept when truncated
    assert 29 < len(addresses(tight)) < 60
    # A requestor payload below 512 counts as 512 (RFC 6891 §6.2.5) ...
    assert 0 < len(addresses(ask(responder, BIG_NAME, edns_payload=100))) < 60
    # ... and a huge one is capped at the server's own limit.
    capped = DnsResponder(lab_zone, max_udp_payload=700)
    assert ask(capped, BIG_NAME, edns_payload=4096).flags & dns.flags.TC


def test_additionals_are_dropped_before_answers_are_cut() -> None:
    records: list[dict[str, object]] = [
        {"name": "_sip._tls.example.com", "type": "SRV", "priority": 0, "weight": 0, "port": 443,
         "target": "sip.example.com"},
    ]
    records += [{"name": "sip.example.com", "type": "A", "value": f"127.77.8.{i}"} for i in range(1, 41)]
    response = ask(DnsResponder(Zone.from_records(records)), "_sip._tls.example.com", "SRV")
    assert not response.flags & dns.flags.TC  # RFC 2181 §9: no TC for missing additional data
    assert [len(rrset) for rrset in response.answer] == [1]
    assert response.additional == []


def test_unsupported_edns_version_gets_badvers(lab_zone: Zone) -> None:
    query = dns.message.make_query("sip.contoso.com", "A", use_edns=1, payload=1232)
    _raw, response = exchange(DnsResponder(lab_zone), query)
    assert response.additional == []  # the OPT is the only additional record ...
    assert response.edns == 0  # ... and says version 0, the one we speak
    # RFC 6891 §6.1.3: BADVERS is 16, the upper 8 bits in the OPT TTL, the lower 4 in the header.
    assert (response.ednsflags >> 24, response.flags & 0xF) == (1, 0)
    assert response.rcode() == dns.rcode.BADVERS == 16


def test_non_query_opcode_gets_notimp(lab_zone: Zone) -> None:
    query = dns.message.make_query("sip.contoso.com", "A")
    query.set_opcode(dns.opcode.STATUS)
    assert exchange(DnsResponder(lab_zone), query)[1].rcode() == dns.rcode.NOTIMP


def test_dynamic_update_gets_notimp(lab_zone: Zone) -> None:
    update = dns.update.UpdateMessage("contoso.com")  # RFC 2136: zone section is contoso.com SOA
    update.add("rogue.contoso.com", 300, "A", "127.77.66.6")
    _raw, response = exchange(DnsResponder(lab_zone), update)
    assert response.opcode() == dns.opcode.UPDATE
    assert response.rcode() == dns.rcode.NOTIMP
    assert ask(DnsResponder(lab_zone), "rogue.contoso.com").rcode() == dns.rcode.NXDOMAIN


def test_garbage_with_a_readable_header_gets_formerr_with_the_same_id(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    garbage = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\xff\xfe\x00"
    raw = responder.respond(garbage, DnsTransport.UDP)
    assert raw is not None
    response = dns.message.from_wire(raw)
    assert response.id == 0xBEEF
    assert response.flags & dns.flags.QR and response.flags & dns.flags.RD
    assert response.rcode() == dns.rcode.FORMERR
    counters = responder.counters
    assert (counters.malformed, counters.formerr_sent, counters.dropped) == (1, 1, 0)
    assert counters.responses_by_rcode == {"FORMERR": 1}


def test_two_questions_get_formerr(lab_zone: Zone) -> None:
    query = dns.message.make_query("sip.contoso.com", "A")
    query.find_rrset(query.question, dns.name.from_text("av.contoso.com"), dns.rdataclass.IN, dns.rdatatype.A,
                     create=True, force_unique=True)
    assert len(query.question) == 2
    assert exchange(DnsResponder(lab_zone), query)[1].rcode() == dns.rcode.FORMERR


def test_two_opt_records_get_formerr(lab_zone: Zone) -> None:
    # RFC 6891 §6.1.1: a query with more than one OPT RR gets FORMERR.
    query = make_query("sip.contoso.com", edns_payload=1232).to_wire()
    opt = query[-11:]  # root owner, type OPT, payload, flags, RDLENGTH 0
    assert opt[:3] == b"\x00\x00\x29"
    doubled = query[:10] + struct.pack("!H", 2) + query[12:] + opt
    raw = DnsResponder(lab_zone).respond(doubled, DnsTransport.UDP)
    assert raw is not None
    assert dns.message.from_wire(raw).rcode() == dns.rcode.FORMERR


def test_binary_labels_are_names_too(lab_zone: Zone) -> None:
    # RFC 2181 §11: any octet may appear in a label; a name the zone does not hold is NXDOMAIN.
    query = dns.message.make_query(dns.name.Name([b"s\x00p", b"contoso", b"com", b""]), "A")
    assert exchange(DnsResponder(lab_zone), query)[1].rcode() == dns.rcode.NXDOMAIN


def test_tsig_signed_query_is_answered_unsigned(lab_zone: Zone) -> None:
    # The lab holds no TSIG keys: the signature is parsed, not checked, and the answer is unsigned.
    query = dns.message.make_query("sip.contoso.com", "A")
    query.use_tsig(dns.tsig.Key("lab-key.", "c2VjcmV0c2VjcmV0c2VjcmV0"))
    raw = DnsResponder(lab_zone).respond(query.to_wire(), DnsTransport.UDP)
    assert raw is not None
    response = dns.message.from_wire(raw)
    assert response.rcode() == dns.rcode.NOERROR
    assert addresses(response) == POOL_NODES
    assert not response.had_tsig


def test_trailing_octets_after_the_query_are_ignored(lab_zone: Zone) -> None:
    query = make_query("sip.contoso.com")
    raw = DnsResponder(lab_zone).respond(query.to_wire() + b"\x00\xff junk", DnsTransport.UDP)
    assert raw is not None
    assert addresses(dns.message.from_wire(raw)) == POOL_NODES


def test_bytearray_and_memoryview_input(lab_zone: Zone) -> None:
    wire = make_query("sip.contoso.com").to_wire()
    responder = DnsResponder(lab_zone)
    for data in (bytearray(wire), memoryview(wire)):
        raw = responder.respond(data, DnsTransport.UDP)  # type: ignore[arg-type]
        assert raw is not None
        assert addresses(dns.message.from_wire(raw)) == POOL_NODES


def test_short_input_and_responses_are_dropped(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    assert responder.respond(b"\x12\x34\x01", DnsTransport.UDP) is None
    answer = responder.respond(make_query("sip.contoso.com").to_wire(), DnsTransport.UDP)
    assert answer is not None
    assert responder.respond(answer, DnsTransport.UDP) is None  # never answer a response
    assert responder.counters.dropped == 2
    assert responder.counters.malformed == 2


def test_seeded_round_robin_shuffle_permutes_a_records_only(lab_zone: Zone) -> None:
    first_seen = set()
    responder = DnsResponder(lab_zone, shuffle_rng=random.Random(99))
    for _ in range(60):
        response = ask(responder, "lyncdiscover.contoso.com")
        assert response.answer[0].rdtype == dns.rdatatype.CNAME  # the chain keeps its place
        shuffled = addresses(response)
        assert sorted(shuffled) == ["127.77.2.11", "127.77.2.12", "127.77.2.13"]
        first_seen.add(shuffled[0])
    assert len(first_seen) == 3
    replay = DnsResponder(lab_zone, shuffle_rng=random.Random(99))
    again = DnsResponder(lab_zone, shuffle_rng=random.Random(99))
    assert [addresses(ask(replay, "sip.contoso.com")) for _ in range(10)] == [
        addresses(ask(again, "sip.contoso.com")) for _ in range(10)
    ]


def test_without_shuffle_the_zone_order_goes_on_the_wire(lab_zone: Zone) -> None:
    # dnspython shuffles RRsets when rendering unless told not to; the responder must not.
    responder = DnsResponder(lab_zone)
    assert all(addresses(ask(responder, "sip.contoso.com")) == POOL_NODES for _ in range(20))


def test_queries_are_counted_by_transport_and_qtype(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    ask(responder, "sip.contoso.com")
    ask(responder, "sip.contoso.com", transport=DnsTransport.TCP)
    ask(responder, "_sip._tls.contoso.com", "SRV")
    ask(responder, "sip.contoso.com", "AAAA")
    exchange(responder, dns.message.make_query("sip.contoso.com", "TYPE999"))
    assert responder.counters.queries == {
        ("udp", "A"): 1, ("tcp", "A"): 1, ("udp", "SRV"): 1, ("udp", "AAAA"): 1, ("udp", "TYPE999"): 1,
    }


def assert_well_formed_reply(data: bytes, response: bytes | None) -> None:
    """``None``, or a response dnspython can parse, carrying the ID of ``data``."""
    if response is None:
        return
    assert len(response) >= 12
    parsed = dns.message.from_wire(response)
    assert parsed.flags & dns.flags.QR
    assert parsed.id == struct.unpack_from("!H", data)[0]


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    zone = Zone.from_records([{"name": "sip.contoso.com", "type": "A", "value": "127.77.1.11"}])
    responder = DnsResponder(zone)
    for transport in DnsTransport:
        assert_well_formed_reply(data, responder.respond(data, transport))
    assert responder.counters.internal_errors == 0


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0, max_value=200), value=st.integers(min_value=0, max_value=255))
def test_mutated_real_queries_never_raise(position: int, value: int) -> None:
    zone = Zone.from_records([{"name": "sip.contoso.com", "type": "A", "value": "127.77.1.11"}])
    packed = bytearray(make_query("sip.contoso.com", edns_payload=1232).to_wire())
    packed[position % len(packed)] = value
    data = bytes(packed)
    assert_well_formed_reply(data, DnsResponder(zone).respond(data, DnsTransport.UDP))
