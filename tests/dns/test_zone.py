"""Zone model: building from plain data, errors for bad records, lookups."""

from __future__ import annotations

import pytest

from simulator.core.dns_zone import (
    ARecord,
    CnameRecord,
    LookupStatus,
    RecordType,
    SrvRecord,
    Zone,
    ZoneError,
)
from tests.dns.conftest import POOL_NODES


def test_load_balanced_name_returns_every_node_in_zone_order(lab_zone: Zone) -> None:
    result = lab_zone.lookup("sip.contoso.com", RecordType.A)
    assert result.status is LookupStatus.NOERROR
    assert [r.address for r in result.answers if isinstance(r, ARecord)] == POOL_NODES
    assert lab_zone.addresses("edgepool-int.contoso.local") == ["127.77.4.11", "127.77.4.12", "127.77.4.13"]


def test_lookup_is_case_insensitive_and_ignores_the_trailing_dot(lab_zone: Zone) -> None:
    assert lab_zone.addresses("SIP.Contoso.COM.") == POOL_NODES
    assert lab_zone.lookup("_SIPFEDERATIONTLS._TCP.contoso.com", "srv").status is LookupStatus.NOERROR


def test_srv_answer_carries_target_addresses_as_additionals(lab_zone: Zone) -> None:
    result = lab_zone.lookup("_sipfederationtls._tcp.contoso.com", "SRV")
    assert result.answers == (SrvRecord("_sipfederationtls._tcp.contoso.com", 0, 0, 5061, "sip.contoso.com"),)
    assert [a.address for a in result.additionals] == POOL_NODES
    partner = lab_zone.lookup("_sipfederationtls._tcp.fabrikam.com", "SRV")
    assert [a.address for a in partner.additionals] == ["127.77.20.1"]


def test_nxdomain_versus_nodata(lab_zone: Zone) -> None:
    assert lab_zone.lookup("nope.contoso.com", "A").status is LookupStatus.NXDOMAIN
    assert lab_zone.lookup("sip.contoso.com", "AAAA").status is LookupStatus.NODATA
    assert lab_zone.lookup("sip.contoso.com", "SRV").status is LookupStatus.NODATA
    # RFC 8020: an empty non-terminal exists.
    assert lab_zone.lookup("_tcp.contoso.com", "A").status is LookupStatus.NODATA
    assert lab_zone.lookup("contoso.com", "A").status is LookupStatus.NODATA
    assert lab_zone.lookup("x.sip.contoso.com", "A").status is LookupStatus.NXDOMAIN


def test_cname_is_answered_and_followed(lab_zone: Zone) -> None:
    result = lab_zone.lookup("lyncdiscover.contoso.com", "A")
    assert isinstance(result.answers[0], CnameRecord)
    assert [r.address for r in result.answers[1:] if isinstance(r, ARecord)] == [
        "127.77.2.11", "127.77.2.12", "127.77.2.13",
    ]
    only_cname = lab_zone.lookup("lyncdiscover.contoso.com", "CNAME")
    assert only_cname.answers == (CnameRecord("lyncdiscover.contoso.com", "webconf.contoso.com"),)


def test_cname_loop_is_bounded() -> None:
    zone = Zone([CnameRecord("a.example", "b.example"), CnameRecord("b.example", "a.example")])
    result = zone.lookup("a.example", "A")
    assert 0 < len(result.answers) <= 8


def test_any_returns_every_record_at_the_name(lab_zone: Zone) -> None:
    assert len(lab_zone.lookup("sip.contoso.com", "ANY").answers) == 3


def test_ttl_defaults_and_can_be_set() -> None:
    zone = Zone.from_records([
        {"name": "a.example", "type": "A", "value": "127.77.1.1"},
        {"name": "b.example", "type": "a", "value": "127.77.1.2", "ttl": 5},
    ])
    assert zone.records == (ARecord("a.example", "127.77.1.1", 300), ARecord("b.example", "127.77.1.2", 5))


GOOD_SRV = {"name": "_sip._tls.contoso.com", "type": "SRV", "priority": 0, "weight": 0, "port": 443,
            "target": "sip.contoso.com"}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"name": "sip.contoso.com", "type": "A", "value": "300.1.1.1"}, "not an IPv4 address"),
        ({"name": "sip.contoso.com", "type": "A", "value": 12}, "IPv4 address string"),
        ({"name": "sip.contoso.com", "type": "A"}, "IPv4 address string"),
        ({"name": "sip.contoso.com", "type": "MX", "value": "x"}, "unsupported record type"),
        ({"name": "", "type": "A", "value": "127.0.0.1"}, "non-empty domain name"),
        ({"name": "bad name.com", "type": "A", "value": "127.0.0.1"}, "invalid label"),
        ({"name": "a" * 64 + ".com", "type": "A", "value": "127.0.0.1"}, "invalid label"),
        ({"name": "a.com", "type": "A", "value": "127.0.0.1", "addr": "x"}, "unknown field(s) addr"),
        ({"name": "a.com", "type": "A", "value": "127.0.0.1", "ttl": -1}, "must be in 0.."),
        ({**GOOD_SRV, "port": 70000}, "must be in 0..65535"),
        ({**GOOD_SRV, "port": "5061"}, "must be an integer"),
        ({**GOOD_SRV, "weight": True}, "must be an integer"),
        ({k: v for k, v in GOOD_SRV.items() if k != "priority"}, "is required"),
        ({**GOOD_SRV, "target": "no..dots"}, "invalid label"),
        ("sip.contoso.com A 1.2.3.4", "must be a mapping"),
    ],
)
def test_bad_records_raise_zone_error_naming_index_and_field(record: object, message: str) -> None:
    good = {"name": "ok.contoso.com", "type": "A", "value": "127.77.1.1"}
    with pytest.raises(ZoneError, match="record 1") as raised:
        Zone.from_records([good, record])  # type: ignore[list-item]
    assert message in str(raised.value)
    assert raised.value.index == 1


def test_cname_with_other_data_and_duplicates_are_rejected() -> None:
    with pytest.raises(ZoneError, match="CNAME and other records"):
        Zone.from_records([
            {"name": "a.example", "type": "A", "value": "127.77.1.1"},
            {"name": "A.example.", "type": "CNAME", "value": "b.example"},
        ])
    with pytest.raises(ZoneError, match="duplicate A record"):
        Zone.from_records([{"name": "a.example", "type": "A", "value": "127.77.1.1"}] * 2)
