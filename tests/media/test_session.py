"""MediaSession in memory: RFC 3550 Appendix A statistics on packet sequences built by hand, RTT on a
link with known one-way delays, and the profiles' packetisation. No sockets, no clock."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from simulator.core.media import AUDIO_CODECS, MediaProfile, MediaSession, audio_profile, video_profile
from simulator.wire.rtp import Goodbye, RtpPacket, SenderReport, classify, parse_compound

PEER_SSRC = 0x5EED


def _receiver() -> MediaSession:
    return MediaSession(audio_profile("PCMU"), 1, random.Random(1))


def _feed(session: MediaSession, seqs: list[int], *, transit: Callable[[int], float] = lambda i: 0.0) -> None:
    """Packets with sequence numbers ``seqs``; packet i was sampled at i × 20 ms (timestamp i × 160)."""
    for i, seq in enumerate(seqs):
        sent_index = (seq - seqs[0]) % 65536
        packet = RtpPacket(0, seq, (1000 + 160 * sent_index) & 0xFFFFFFFF, PEER_SSRC, bytes(160))
        session.receive(packet.encode(), 0.02 * sent_index + transit(i))


def test_no_loss_in_order() -> None:
    session = _receiver()
    _feed(session, list(range(100, 200)))
    stats = session.stats()
    # RFC 3550 A.1: the first packet is the probation packet; base is the second (MIN_SEQUENTIAL = 2)
    assert (stats.expected, stats.lost, stats.loss_rate, stats.packets_received) == (99, 0, 0.0, 100)


def test_loss_across_a_sequence_wrap() -> None:
    session = _receiver()
    seqs = [(65530 + i) % 65536 for i in range(30)]
    dropped = {seqs[5], seqs[6], seqs[20]}  # 65535, 0 and 14
    _feed(session, [s for s in seqs if s not in dropped])
    stats = session.stats()
    assert stats.expected == 29  # extended max (65536 + 23) − base (65531) + 1
    assert stats.lost == 3
    assert stats.loss_rate == pytest.approx(3 / 29)


def test_reorder_and_duplicates_are_told_apart() -> None:
    session = _receiver()
    _feed(session, [10, 11, 12, 14, 13, 15, 15, 16])
    stats = session.stats()
    assert (stats.reordered, stats.duplicates) == (1, 1)
    assert stats.lost == -1  # RFC 3550 A.3: duplicates count as received, so the loss goes negative
    assert stats.loss_rate == 0.0
    assert stats.reorder_ratio == pytest.approx(1 / 8)


def test_jitter_follows_the_a8_recurrence() -> None:
    """Transit alternating 0 / 10 ms: every |D| is 10 ms = 80 timestamp units (8 kHz), so after k
    updates J_k = 80 (1 − (15/16)^k) (RFC 3550 A.8, J += (|D| − J)/16 from J = 0)."""
    session = _receiver()
    _feed(session, list(range(50)), transit=lambda i: 0.010 * (i % 2))
    updates = 48  # the probation packet (the first) does not reach the estimator; the second starts it
    expected = 80 * (1 - (15 / 16) ** updates)
    stats = session.stats()
    assert stats.jitter == pytest.approx(expected, rel=1e-9)
    assert stats.jitter_ms == pytest.approx(expected / 8, rel=1e-9)
    mean = sum(80 * (1 - (15 / 16) ** k) for k in range(1, updates + 1)) / updates
    assert stats.average_jitter_ms == pytest.approx(mean / 8, rel=1e-9)


def test_constant_transit_has_no_jitter() -> None:
    session = _receiver()
    _feed(session, list(range(50)), transit=lambda i: 0.123)
    assert session.stats().jitter == pytest.approx(0.0, abs=1e-6)


def _exchange(
    a: MediaSession, b: MediaSession, seconds: float, a_to_b: float, b_to_a: float, drop: Callable[[int], bool]
) -> None:
    """Run both sessions on a virtual 1 ms clock over a link with fixed one-way delays."""
    in_flight: list[tuple[float, int, MediaSession, bytes]] = []
    serial = 0
    now = 0.0
    sent_a = 0
    while now < seconds:
        for data in a.datagrams_to_send(now):
            if classify(data) == "rtp":
                sent_a += 1
                if drop(sent_a):
                    continue
            serial += 1
            in_flight.append((now + a_to_b, serial, b, data))
        for data in b.datagrams_to_send(now):
            serial += 1
            in_flight.append((now + b_to_a, serial, a, data))
        in_flight.sort(key=lambda x: (x[0], x[1]))
        while in_flight and in_flight[0][0] <= now + 1e-9:
            _, _, target, data = in_flight.pop(0)
            target.receive(data, now)
        now = round(now + 0.001, 6)


def test_rtt_from_sr_and_rr_is_the_sum_of_the_one_way_delays() -> None:
    profile = audio_profile("SILK-WB", rtcp_interval=0.5)
    a = MediaSession(profile, 0xA, random.Random(1))
    b = MediaSession(profile, 0xB, random.Random(2))
    _exchange(a, b, 10.0, 0.015, 0.025, lambda n: n % 10 == 0)  # drop every 10th RTP packet a → b
    for stats in (a.stats(), b.stats()):
        assert stats.rtt_samples >= 5
        # §6.4.1: LSR/DLSR are in 1/65536 s; the receive instant is on the 1 ms grid
        assert stats.rtt_min_ms == pytest.approx(40.0, abs=0.1)
        assert stats.rtt_max_ms == pytest.approx(40.0, abs=0.1)
    b_stats, a_stats = b.stats(), a.stats()
    assert b_stats.loss_rate == pytest.approx(0.1, abs=0.01)
    # What b reported in its last RR about a's stream, as a sees it
    assert a_stats.remote_cumulative_lost is not None
    assert abs(a_stats.remote_cumulative_lost - b_stats.lost) <= 5  # reports lag by < one RTCP interval
    assert a_stats.remote_fraction_lost == pytest.approx(0.1, abs=0.04)
    assert a_stats.packets_sent == pytest.approx(500, abs=2)  # 50 packets/s for 10 s
    assert b_stats.packets_received == pytest.approx(a_stats.packets_sent * 0.9, abs=3)
    assert a_stats.bytes_sent == a_stats.packets_sent * (12 + 90)  # RTP header + SILK-WB payload


def test_audio_codec_table_and_override() -> None:
    pcmu = audio_profile("PCMU")
    assert (pcmu.payload_type, pcmu.clock_rate, pcmu.frame_size, pcmu.samples_per_frame) == (0, 8000, 160, 160)
    assert audio_profile("G722").clock_rate == 8000  # RFC 3551 §4.5.2
    assert audio_profile("SILK-WB", payload_size=120).frame_size == 120
    assert audio_profile("PCMA", packets_per_second=100).frame_size == 80  # 10 ms of 64 kbit/s
    assert all(not 64 <= codec.payload_type <= 95 for codec in AUDIO_CODECS.values())
    with pytest.raises(ValueError, match="RFC 5761"):
        MediaProfile("audio", "x", 72, 8000, 50, 160)


def test_video_frames_are_split_with_one_timestamp_and_a_marker_on_the_last_packet() -> None:
    profile = video_profile(frame_rate=30, frame_size=6250, max_payload=1200)
    session = MediaSession(profile, 7, random.Random(3))
    first = [RtpPacket.parse(d) for d in session.datagrams_to_send(0.0) if classify(d) == "rtp"]
    second = [RtpPacket.parse(d) for d in session.datagrams_to_send(1 / 30) if classify(d) == "rtp"]
    assert [len(p.payload) for p in first] == [1200] * 5 + [250]
    assert [p.marker for p in first] == [False] * 5 + [True]
    assert len({p.timestamp for p in first}) == 1
    assert (second[0].timestamp - first[0].timestamp) % 2**32 == 3000  # 90 kHz / 30 frames/s
    assert (second[0].sequence - first[-1].sequence) % 65536 == 1


def test_stop_sends_a_bye_and_ends_the_timer() -> None:
    session = MediaSession(audio_profile(), 9, random.Random(4))
    session.datagrams_to_send(0.0)
    assert session.get_timer() == pytest.approx(0.02)
    session.stop(0.01)
    assert session.get_timer() == 0.01
    (last,) = session.datagrams_to_send(0.01)
    packets = parse_compound(last)
    assert isinstance(packets[0], SenderReport) and isinstance(packets[-1], Goodbye)
    assert packets[-1].ssrcs == (9,)
    assert session.get_timer() is None and session.datagrams_to_send(1.0) == []


def test_a_late_caller_gets_the_frames_it_missed_with_their_own_timestamps() -> None:
    session = MediaSession(audio_profile("PCMU", rtcp_interval=100.0), 9, random.Random(4))
    session.datagrams_to_send(0.0)
    late = [RtpPacket.parse(d) for d in session.datagrams_to_send(0.1) if classify(d) == "rtp"]
    assert len(late) == 5  # frames due at 20, 40, 60, 80, 100 ms
    assert [(p.timestamp - late[0].timestamp) % 2**32 for p in late] == [0, 160, 320, 480, 640]
