"""The socket-free DNS responder: answers, truncation, EDNS, malformed input, shuffle."""

from __future__ import annotations

import random
import struct

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.core.dns_zone import Zone
from simulator.net.dns import DnsResponder, DnsTransport
from tests.dns.conftest import BIG_NAME, BIG_NAME_ADDRESSES, POOL_NODES


def ask(responder: DnsResponder, name: str, qtype: str = "A", *, transport: DnsTransport = DnsTransport.UDP,
        edns_payload: int | None = None) -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    if edns_payload is not None:
        query.add_ar(EDNS0(udp_len=edns_payload))
    raw = responder.respond(query.pack(), transport)
    assert raw is not None
    response = DNSRecord.parse(raw)
    assert response.header.id == query.header.id
    assert response.header.qr == 1
    return response


def addresses(response: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in response.rr if rr.rtype == QTYPE.A]


def test_answers_all_pool_nodes_authoritatively(lab_zone: Zone) -> None:
    response = ask(DnsResponder(lab_zone), "sip.contoso.com")
    assert response.header.aa == 1
    assert response.header.rcode == RCODE.NOERROR
    assert addresses(response) == POOL_NODES


def test_srv_answer_with_additional_a_records(lab_zone: Zone) -> None:
    response = ask(DnsResponder(lab_zone), "_xmpp-server._tcp.contoso.com", "SRV")
    (srv,) = response.rr
    assert (srv.rdata.priority, srv.rdata.weight, srv.rdata.port, str(srv.rdata.target)) == (
        0, 0, 5269, "sip.contoso.com.",
    )
    assert [str(rr.rdata) for rr in response.ar] == POOL_NODES


def test_nxdomain_and_nodata_rcodes(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    assert ask(responder, "missing.contoso.com").header.rcode == RCODE.NXDOMAIN
    nodata = ask(responder, "sip.contoso.com", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR
    assert nodata.rr == []
    assert responder.counters.responses_by_rcode == {"NXDOMAIN": 1, "NOERROR": 1}


def test_large_answer_is_truncated_at_512_without_edns(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    query = DNSRecord.question(BIG_NAME, "A")
    raw = responder.respond(query.pack(), DnsTransport.UDP)
    assert raw is not None
    assert len(raw) <= 512
    response = DNSRecord.parse(raw)
    assert response.header.tc == 1
    kept = addresses(response)
    assert 0 < len(kept) < len(BIG_NAME_ADDRESSES)
    assert kept == BIG_NAME_ADDRESSES[: len(kept)]  # whole RRs only, in order
    assert responder.counters.truncated == 1


def test_large_answer_is_whole_over_tcp(lab_zone: Zone) -> None:
    response = ask(DnsResponder(lab_zone), BIG_NAME, transport=DnsTransport.TCP)
    assert response.header.tc == 0
    assert addresses(response) == BIG_NAME_ADDRESSES


def test_edns_payload_size_is_honoured_and_echoed(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone, max_udp_payload=1232)
    roomy = ask(responder, BIG_NAME, edns_payload=1232)  # 60 × 16 octets fits in 1232
    assert roomy.header.tc == 0
    assert addresses(roomy) == BIG_NAME_ADDRESSES
    (opt,) = [rr for rr in roomy.ar if rr.rtype == QTYPE.OPT]
    assert opt.rclass == 1232
    tight = ask(responder, BIG_NAME, edns_payload=600)
    assert tight.header.tc == 1
    assert len(tight.pack()) <= 600
    assert any(rr.rtype == QTYPE.OPT for rr in tight.ar)  # RFC 6891 §7: OPT kept when truncated
    assert 29 < len(addresses(tight)) < 60
    # A requestor payload below 512 counts as 512 (RFC 6891 §6.2.5) ...
    assert 0 < len(addresses(ask(responder, BIG_NAME, edns_payload=100))) < 60
    # ... and a huge one is capped at the server's own limit.
    capped = DnsResponder(lab_zone, max_udp_payload=700)
    assert ask(capped, BIG_NAME, edns_payload=4096).header.tc == 1


def test_additionals_are_dropped_before_answers_are_cut() -> None:
    records: list[dict[str, object]] = [
        {"name": "_sip._tls.example.com", "type": "SRV", "priority": 0, "weight": 0, "port": 443,
         "target": "sip.example.com"},
    ]
    records += [{"name": "sip.example.com", "type": "A", "value": f"127.77.8.{i}"} for i in range(1, 41)]
    response = ask(DnsResponder(Zone.from_records(records)), "_sip._tls.example.com", "SRV")
    assert response.header.tc == 0  # RFC 2181 §9: no TC for missing additional data
    assert len(response.rr) == 1
    assert response.ar == []


def test_unsupported_edns_version_gets_badvers(lab_zone: Zone) -> None:
    query = DNSRecord.question("sip.contoso.com", "A")
    query.add_ar(EDNS0(udp_len=1232, version=1))
    raw = DnsResponder(lab_zone).respond(query.pack(), DnsTransport.UDP)
    assert raw is not None
    response = DNSRecord.parse(raw)
    (opt,) = response.ar
    extended_rcode = ((opt.ttl >> 24) << 4) | response.header.rcode
    assert extended_rcode == 16


def test_non_query_opcode_gets_notimp(lab_zone: Zone) -> None:
    query = DNSRecord.question("sip.contoso.com", "A")
    query.header.opcode = 2  # STATUS
    raw = DnsResponder(lab_zone).respond(query.pack(), DnsTransport.UDP)
    assert raw is not None
    assert DNSRecord.parse(raw).header.rcode == RCODE.NOTIMP


def test_garbage_with_a_readable_header_gets_formerr_with_the_same_id(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    garbage = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\xff\xfe\x00"
    raw = responder.respond(garbage, DnsTransport.UDP)
    assert raw is not None
    response = DNSRecord.parse(raw)
    assert (response.header.id, response.header.qr, response.header.rd) == (0xBEEF, 1, 1)
    assert response.header.rcode == RCODE.FORMERR
    counters = responder.counters
    assert (counters.malformed, counters.formerr_sent, counters.dropped) == (1, 1, 0)


def test_two_questions_get_formerr(lab_zone: Zone) -> None:
    query = DNSRecord.question("sip.contoso.com", "A")
    query.add_question(DNSRecord.question("av.contoso.com", "A").q)
    raw = DnsResponder(lab_zone).respond(query.pack(), DnsTransport.UDP)
    assert raw is not None
    assert DNSRecord.parse(raw).header.rcode == RCODE.FORMERR


def test_short_input_and_responses_are_dropped(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    assert responder.respond(b"\x12\x34\x01", DnsTransport.UDP) is None
    answer = responder.respond(DNSRecord.question("sip.contoso.com").pack(), DnsTransport.UDP)
    assert answer is not None
    assert responder.respond(answer, DnsTransport.UDP) is None  # never answer a response
    assert responder.counters.dropped == 2
    assert responder.counters.malformed == 2


def test_seeded_round_robin_shuffle_permutes_a_records_only(lab_zone: Zone) -> None:
    first_seen = set()
    responder = DnsResponder(lab_zone, shuffle_rng=random.Random(99))
    for _ in range(60):
        response = ask(responder, "lyncdiscover.contoso.com")
        assert response.rr[0].rtype == QTYPE.CNAME  # the chain keeps its place
        shuffled = addresses(response)
        assert sorted(shuffled) == ["127.77.2.11", "127.77.2.12", "127.77.2.13"]
        first_seen.add(shuffled[0])
    assert len(first_seen) == 3
    replay = DnsResponder(lab_zone, shuffle_rng=random.Random(99))
    again = DnsResponder(lab_zone, shuffle_rng=random.Random(99))
    assert [addresses(ask(replay, "sip.contoso.com")) for _ in range(10)] == [
        addresses(ask(again, "sip.contoso.com")) for _ in range(10)
    ]


def test_queries_are_counted_by_transport_and_qtype(lab_zone: Zone) -> None:
    responder = DnsResponder(lab_zone)
    ask(responder, "sip.contoso.com")
    ask(responder, "sip.contoso.com", transport=DnsTransport.TCP)
    ask(responder, "_sip._tls.contoso.com", "SRV")
    ask(responder, "sip.contoso.com", "AAAA")
    assert responder.counters.queries == {
        ("udp", "A"): 1, ("tcp", "A"): 1, ("udp", "SRV"): 1, ("udp", "AAAA"): 1,
    }


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    zone = Zone.from_records([{"name": "sip.contoso.com", "type": "A", "value": "127.77.1.11"}])
    responder = DnsResponder(zone)
    for transport in DnsTransport:
        response = responder.respond(data, transport)
        assert response is None or len(response) >= 12


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0, max_value=200), value=st.integers(min_value=0, max_value=255))
def test_mutated_real_queries_never_raise(position: int, value: int) -> None:
    zone = Zone.from_records([{"name": "sip.contoso.com", "type": "A", "value": "127.77.1.11"}])
    query = DNSRecord.question("sip.contoso.com", "A")
    query.add_ar(EDNS0(udp_len=1232))
    packed = bytearray(query.pack())
    packed[position % len(packed)] = value
    DnsResponder(zone).respond(bytes(packed), DnsTransport.UDP)
