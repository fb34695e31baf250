"""The pure parts of ``bench relay``: chi-square tail, port figures, sharding, thresholds."""

from __future__ import annotations

import pytest

from simulator.net.clients.relay_load import Answer, Credentials, Node, ShardSpec, rfc_answer, rfc_request
from simulator.scenario.bench_relay import BenchError, Threshold, chi_square_sf, port_figures, shard_specs
from simulator.wire import stun, turn
from simulator.wire.stun import attr


@pytest.mark.parametrize(("statistic", "df", "p"), [
    (3.841, 1, 0.05), (6.635, 1, 0.01), (18.307, 10, 0.05), (124.342, 100, 0.05), (232.912, 199, 0.05),
    (77.929, 100, 0.95),  # lower tail: the 0.95 upper-tail point
])
def test_chi_square_tail_matches_the_tables(statistic: float, df: int, p: float) -> None:
    """Critical values from the standard chi-square table (NIST/SEMATECH e-Handbook 1.3.6.7.4; df 199 from
    the Wilson–Hilferty form of the same table row)."""
    assert chi_square_sf(statistic, df) == pytest.approx(p, abs=2e-3)


def test_port_figures_uniform_and_parity() -> None:
    figures = port_figures({p: 2 for p in range(100, 110)}, (100, 109))
    assert figures["chi_square"] == 0 and figures["uniform_p"] == 1.0
    assert (figures["even"], figures["odd"], figures["distinct"], figures["range_size"]) == (10, 10, 10, 10)
    skewed = port_figures({100: 50}, (100, 109))
    assert skewed["uniform_p"] < 1e-6 and skewed["even"] == 50 and skewed["odd"] == 0
    sparse = port_figures({p: 1 for p in range(1000, 1100)}, (1000, 1999))  # 100 allocations over 1000 ports
    assert (sparse["bin_width"], sparse["df"]) == (50, 19)  # 20 bins of 50 ports: 5 expected in each
    assert sparse["chi_square"] == pytest.approx(2 * (50 - 5) ** 2 / 5 + 18 * 5)  # two bins of 50, eighteen empty
    assert sparse["uniform_p"] < 1e-6


def test_shards_add_up_and_never_share_sources() -> None:
    spec = ShardSpec(nodes=(Node("127.93.0.1", 3478),), credentials=Credentials("a", "b"), concurrency=7,
                     count=101, rate=30.0, local_hosts=("127.93.0.2", "127.93.0.3", "127.93.0.4"),
                     port_slice=(30000, 30009))
    shards = shard_specs(spec, 3)
    assert sum(s.count or 0 for s in shards) == 101 and sum(s.concurrency for s in shards) == 7
    assert sum(s.rate or 0 for s in shards) == pytest.approx(30.0)
    assert [s.local_hosts for s in shards] == [("127.93.0.2",), ("127.93.0.3",), ("127.93.0.4",)]
    slices = [s.port_slice for s in shards]
    assert slices == [(30000, 30003), (30004, 30006), (30007, 30009)]
    with pytest.raises(BenchError):
        shard_specs(spec, 11)  # 10 source ports cannot be split 11 ways


def test_threshold_parse() -> None:
    assert Threshold.parse("alloc_ms:p99<50") == Threshold("alloc_ms:p99<50", "alloc_ms", "p99", "<", 50.0)
    assert Threshold.parse(" alloc_ok_ratio > 0.999").op == ">"
    assert Threshold.parse("fail_exhaustion==0").metric == "fail_exhaustion"
    for bad in ("alloc_ms<5", "nope>1", "alloc_ok_ratio:p99>1", "alloc_ms:p99 50"):
        with pytest.raises(BenchError):
            Threshold.parse(bad)


# RFC 5769 §2.1 Sample Request (short-term password; padding bytes 0x20 as printed in the RFC)
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff"
    "80290008932ff9b151263b36000600096576746a3a6836765920202000080014"
    "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf")


def test_fast_request_matches_rfc5769_vector() -> None:
    """The load client's template builder: MESSAGE-INTEGRITY and FINGERPRINT byte for byte as RFC 5769 §2.1."""
    body = RFC5769_REQUEST[20:20 + 0x58 - 24 - 8]  # the attributes before MESSAGE-INTEGRITY
    built = rfc_request(0x0001, RFC5769_REQUEST[8:20], body, b"VOkJxbRl1RmTxUk/WvJxBt")
    assert built == RFC5769_REQUEST


def test_fast_answer_reader() -> None:
    """Responses built by the project's full codec (itself checked against RFC 5769) read back the same."""
    tid = bytes(range(12))
    request = stun.request(turn.TurnMethod.ALLOCATE, tid, dialect=turn.RFC)
    ok = stun.success_response(request, attr(turn.XOR_RELAYED_ADDRESS, stun.Address("192.0.2.1", 50123)),
                               attr(turn.LIFETIME, 600)).serialize(key=b"k" * 16, fingerprint=True)
    assert rfc_answer(ok) == Answer(True, None, None, None, 50123)
    challenge = stun.error_response(request, 401, "Unauthorized", attr(stun.REALM, "edgesim.test"),
                                    attr(stun.NONCE, "abc123xyz")).serialize()
    assert rfc_answer(challenge) == Answer(False, 401, "edgesim.test", "abc123xyz", None)
    full = stun.error_response(request, 508, "Insufficient Capacity").serialize(fingerprint=True)
    assert rfc_answer(full) == Answer(False, 508, None, None, None)
    for broken in (ok[:19], ok[:-3], b"\x00" * 20, challenge[:22] + b"\xff\xff" + challenge[24:]):
        assert rfc_answer(broken) is None  # short, truncated, a request, an attribute running past the end
