"""Measurements are true: RTP calls through a NAT box, with and without impairment, on real sockets.

Each call: a caller behind a NAT box (in-process endpoint) and a callee on a plain UDP socket that
latches onto the caller's mapped address (symmetric RTP). Both ends run a MediaSession (audio, 50
packets/s) through a MediaRunner; RTCP every ~1 s so the RTT has samples within the test.

Injected on one leg — the caller NAT's outbound direction, caller → callee — as issue #11 asks:
2 % loss, 40 ms delay, ±10 ms jitter (uniform, independent per packet). Expected values, from the
injected ones and RFC 3550, not from the code under test:

* **Loss** at the callee: 2 %. N ≈ 20 calls × 400 packets = 8,000 packets, so the binomial standard
  deviation is sqrt(0.02 × 0.98 / 8000) = 0.16 points; tolerance ±0.6 points (about 4 σ). Checked too
  against the truth: the box's own count of dropped RTP packets.
* **RTT** (RFC 3550 §6.4.1, A − LSR − DLSR): the report that crosses the impaired direction adds
  40 ms + U(−10, +10) ms, the other none, so each sample is 40 ms + U(−10, 10) + the loopback and
  event-loop time (≥ 0, about 1 ms). Mean of ~150 samples per side: σ = 5.77 / sqrt(150) ≈ 0.5 ms.
  Tolerance: 38.5 ms ≤ mean ≤ 43 ms.
* **Jitter** (RFC 3550 A.8): J ← J + (|D| − J)/16 with D(i−1, i) = (R_i − S_i) − (R_{i−1} − S_{i−1}), the
  change in transit time. The sender stamps the sampling instant, so transit = base + X_i with X_i
  i.i.d. uniform on [−a, a], a = 10 ms. D = X_i − X_{i−1} is triangular on [−2a, 2a], whose mean
  absolute value is E|D| = ∫₀^{2a} x · 2(2a − x)/(2a)² dx = 2a/3 = 6.67 ms. J is an exponential
  average of |D| with gain 1/16, so its stationary mean is E|D| = 6.67 ms (a lost packet changes
  nothing: X_{i+1} − X_{i−1} has the same law). Starting from J = 0, E[J_k] = m(1 − (15/16)^k); the mean
  over the n packets of a call (AverageJitterInMs) is m(1 − 15(1 − (15/16)^n)/n) ≈ m(1 − 15/n): 6.41 ms
  for n = 390. Tolerance ±0.7 ms on both (≈ 10 %; the spread over 20 calls is 0.20 ms for the final J and
  0.06 ms for the average, by simulating the estimator on the injected law alone).
  The clean direction (callee → caller) is the control: its jitter is what the machine itself adds
  (0.1–0.6 ms on an idle 2-core box). Above 1 ms another process is starving the event loop; the test
  measures once more and fails, saying so, if the machine is still that busy. The machine's lateness Y
  adds to the injected X in every transit time, so per packet |D_X + D_Y| ≤ |D_X| + |D_Y|, and J, a
  positive-weighted sum of those, is at most J_X + J_Y; so each upper bound also allows the control's
  J of the same kind (its average, or its final value). The final J weighs only the last ~0.5 s of a
  call, and a stall there shows in the control's final J and not in its average: the 20 calls share one
  loop, so averaging them does not shrink it. (One 15 ms pause 0.2 s before the end, put in by hand,
  raised the final J by ~0.65 ms on the impaired direction and ~0.4 ms on the control, whose final J,
  ~0.85 ms without it, is above its average anyway: the iteration that stops the calls sends the last
  frames late. A CI run failed the old ±0.7 bound with a final J 0.91 ms over m and an average 0.07 over.)
  Zero-mean lateness cannot lower E|D| (Jensen), so the lower bounds stay m − 0.7.
* **Reorder**: none from the injected law itself — packets sent exactly 20 ms apart with delays in [30, 50]
  ms can at most tie (tests/media/test_impairment.py checks that, and the measured reorder against netem's
  p(1 − p), on a virtual clock). On a real loop a late sender catches up with frames sent back to back,
  and two packets sent together with independent delays overtake each other half the time; bounded here
  at 1 % (measured 0.01–0.5 %).

Without impairment: 0 loss over ≥ 10,000 packets (25 calls × 2 directions × 100 packets/s × 2.5 s =
12,500), and every packet sent arrives.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest

from simulator.core.impairment import Impairment, PathImpairment
from simulator.core.media import MediaProfile, MediaSession, MediaStats, audio_profile
from simulator.core.nat import Behaviour, NatConfig
from simulator.net.clients.media import MediaRunner, UdpMediaSocket, ntp_offset
from simulator.net.nat.natbox import DatapathDrop, NatBox, NatUdpEndpoint
from tests.media.conftest import loopback_ip

SEED = 3550
INJECTED = Impairment(loss=0.02, delay_ms=40.0, jitter_ms=10.0)
NOISY = 1.0  # ms of jitter on the clean direction above which the machine cannot time packets


@dataclass
class Call:
    endpoint: NatUdpEndpoint
    caller: MediaRunner
    callee: UdpMediaSocket


async def _place_calls(box: NatBox, count: int, profile: MediaProfile, rng: random.Random) -> list[Call]:
    loop = asyncio.get_running_loop()
    callee_ip = loopback_ip()
    calls = []
    for index in range(count):
        offset = ntp_offset(loop)
        caller_session = MediaSession(profile, rng.getrandbits(32), random.Random(rng.random()), ntp_offset=offset)
        callee_session = MediaSession(profile, rng.getrandbits(32), random.Random(rng.random()), ntp_offset=offset)
        callee = await UdpMediaSocket.open(callee_session, (callee_ip, 0))
        runner_box: list[MediaRunner] = []
        endpoint = await box.open_udp(
            ("10.92.0.1", 40000 + index), lambda data, src, box_=runner_box: box_[0].datagram_received(data)
        )
        target = callee.local
        runner = MediaRunner(caller_session, lambda data, ep=endpoint, dst=target: ep.sendto(data, dst))
        runner_box.append(runner)
        calls.append(Call(endpoint, runner, callee))
    return calls


async def _run(box: NatBox, calls: list[Call], duration: float) -> list[tuple[MediaStats, MediaStats]]:
    try:
        for call in calls:
            call.caller.start()
        for _ in range(200):  # the callees start once they know where to send (≤ 2 s, bounded)
            if all(call.callee.remote is not None for call in calls):
                break
            await asyncio.sleep(0.01)
        assert all(call.callee.remote is not None for call in calls), "a caller's packets never arrived"
        for call in calls:
            call.callee.runner.start()
        await asyncio.sleep(duration)
        await asyncio.gather(*(call.caller.stop() for call in calls), *(c.callee.runner.stop() for c in calls))
        await asyncio.sleep(0.3)  # let every datagram in flight (≤ 50 ms) land
        return [(call.caller.session.stats(), call.callee.runner.session.stats()) for call in calls]
    finally:
        for call in calls:
            call.callee.close()
            call.endpoint.close()
        await asyncio.sleep(0)


def _nat(public_ip: str, impairment: PathImpairment | None) -> NatBox:
    config = NatConfig(mapping=Behaviour.ENDPOINT_INDEPENDENT, filtering=Behaviour.ADDRESS_AND_PORT_DEPENDENT)
    return NatBox.dynamic(
        config,
        public_ip,
        random.Random(SEED),
        (43000, 43999),
        impairment=impairment,
        impairment_rng=random.Random(SEED),
    )


async def _impaired_run() -> tuple[list[MediaStats], list[MediaStats], int]:
    profile = audio_profile("SILK-WB", rtcp_interval=1.0)
    async with _nat(loopback_ip(), PathImpairment(outbound=INJECTED)) as box:
        calls = await _place_calls(box, 20, profile, random.Random(SEED))
        results = await _run(box, calls, 8.0)
        link = box.impaired_outbound
        assert link is not None and box.impaired_inbound is None
    return [caller for caller, _ in results], [callee for _, callee in results], link.counters.dropped


def _control_noise(callers: list[MediaStats]) -> float:
    """Mean jitter of the clean direction (ms): what the machine itself adds (0.1-0.6 ms when idle)."""
    return sum(s.average_jitter_ms for s in callers) / len(callers)


def _control_final(callers: list[MediaStats]) -> float:
    """The clean direction's jitter at the end of the calls (ms): what the machine added in their last ~0.5 s."""
    return sum(s.jitter_ms for s in callers) / len(callers)


@pytest.mark.timeout(60)
async def test_injected_loss_delay_and_jitter_are_measured() -> None:
    callers, callees, dropped = await _impaired_run()
    if _control_noise(callers) > NOISY:
        # Another process starved this event loop: timing figures say more about the machine than the
        # code. Measure again once; the control direction decides whether the figures can be judged.
        print(f"\ncontrol direction jitter {_control_noise(callers):.2f} ms > {NOISY} ms: measuring again")
        callers, callees, dropped = await _impaired_run()
    noise = _control_noise(callers)
    assert noise <= NOISY, f"the machine is too busy to time packets: clean-direction jitter {noise:.2f} ms"

    expected = sum(s.expected for s in callees)
    lost = sum(s.lost for s in callees)
    loss_rate = lost / expected
    rtcp_dropped = sum(s.rtcp_sent for s in callers) - sum(s.rtcp_received for s in callees)
    rtp_dropped = dropped - rtcp_dropped  # the truth, from the box
    samples = sum(s.rtt_samples for s in callers), sum(s.rtt_samples for s in callees)
    mean_rtt_caller = sum((s.rtt_ms or 0.0) * s.rtt_samples for s in callers) / samples[0]
    mean_rtt_callee = sum((s.rtt_ms or 0.0) * s.rtt_samples for s in callees) / samples[1]
    n = sum(s.packets_received for s in callees) / len(callees)
    average_jitter = sum(s.average_jitter_ms for s in callees) / len(callees)
    final_jitter = sum(s.jitter_ms for s in callees) / len(callees)
    m = 2 * INJECTED.jitter_ms / 3  # E|D| for D triangular on [-2a, 2a]
    expected_average = m * (1 - 15 * (1 - (15 / 16) ** n) / n)
    reordered = sum(s.reordered for s in callees)
    print(
        f"\nloss {loss_rate:.4%} ({lost}/{expected}; box dropped {rtp_dropped} RTP), "
        f"RTT caller {mean_rtt_caller:.2f} ms / callee {mean_rtt_callee:.2f} ms ({samples} samples), "
        f"jitter average {average_jitter:.3f} ms (expected {expected_average:.3f}), final {final_jitter:.3f} ms "
        f"(expected {m:.3f}), control {noise:.3f} ms / final {_control_final(callers):.3f} ms, "
        f"reordered {reordered}, n={n:.0f}"
    )
    assert expected >= 7000
    assert abs(loss_rate - INJECTED.loss) <= 0.006
    assert abs(lost - rtp_dropped) <= 2 * len(callees)  # first (probation) or last packets of a stream
    assert all(s.lost == 0 for s in callers)  # the other direction is clean
    assert min(samples) >= 100
    assert 38.5 <= mean_rtt_caller <= 43.0
    assert 38.5 <= mean_rtt_callee <= 43.0
    assert expected_average - 0.7 <= average_jitter <= expected_average + 0.7 + noise
    assert m - 0.7 <= final_jitter <= m + 0.7 + _control_final(callers)
    assert reordered <= 0.01 * expected
    assert all(s.malformed == 0 for s in callers + callees)


@pytest.mark.timeout(60)
async def test_no_loss_over_ten_thousand_packets_without_impairment() -> None:
    profile = audio_profile("PCMU", packets_per_second=100.0, rtcp_interval=1.0)
    async with _nat(loopback_ip(), None) as box:
        assert box.impaired_outbound is None and box.impaired_inbound is None
        calls = await _place_calls(box, 25, profile, random.Random(SEED + 1))
        results = await _run(box, calls, 2.5)
        drops = sum(box.counters.drops.values()) + sum(box.table.drops.values())
    sessions = [s for pair in results for s in pair]
    sent = sum(s.packets_sent for s in sessions)
    received = sum(s.packets_received for s in sessions)
    expected = sum(s.expected for s in sessions)
    print(f"\nunimpaired: {sent} sent, {received} received, {expected} expected, drops {drops}")
    assert received >= 10_000
    assert drops == 0
    assert all(s.lost == 0 and s.loss_rate == 0.0 for s in sessions)
    for caller, callee in results:  # every packet sent arrived, each way
        assert callee.packets_received == caller.packets_sent
        assert caller.packets_received == callee.packets_sent
    assert DatapathDrop.IMPAIRMENT_LOSS not in box.counters.drops
