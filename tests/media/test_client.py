"""The asyncio shell: a MediaSession over a real UDP socket pair on loopback."""

from __future__ import annotations

import asyncio
import random
import socket

from simulator.core.media import MediaSession, audio_profile, video_profile
from simulator.net.clients.media import MediaRunner, UdpMediaSocket, ntp_offset
from tests.media.conftest import loopback_ip


async def test_a_socket_pair_carries_audio_both_ways_with_rtcp() -> None:
    loop = asyncio.get_running_loop()
    profile = audio_profile("PCMU", rtcp_interval=0.2)
    a = await UdpMediaSocket.open(
        MediaSession(profile, 1, random.Random(1), ntp_offset=ntp_offset(loop)), (loopback_ip(), 0)
    )
    b = await UdpMediaSocket.open(MediaSession(profile, 2, random.Random(2)), (loopback_ip(), 0), a.local)
    a.remote = b.local
    try:
        a.runner.start()
        b.runner.start()
        await asyncio.sleep(1.0)
        stats_a, stats_b = await asyncio.gather(a.runner.stop(), b.runner.stop(linger=0.1))
    finally:
        a.close()
        b.close()
        await asyncio.sleep(0)
    for mine, theirs in ((stats_a, stats_b), (stats_b, stats_a)):
        assert 45 <= mine.packets_sent <= 55  # 50 packets/s for 1 s
        assert theirs.packets_received == mine.packets_sent
        assert theirs.lost == 0 and theirs.bytes_received == mine.bytes_sent
        assert mine.rtt_samples >= 1 and mine.rtt_ms is not None and mine.rtt_ms < 20.0
    assert a.runner.session.stopped and a.runner.send_errors == 0


async def test_garbage_and_strangers_do_not_stop_the_stream() -> None:
    profile = video_profile(frame_rate=10, frame_size=3000, rtcp_interval=0.2)
    b = await UdpMediaSocket.open(MediaSession(profile, 2, random.Random(2)), (loopback_ip(), 0))
    a = await UdpMediaSocket.open(MediaSession(profile, 1, random.Random(1)), (loopback_ip(), 0), b.local)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.bind((loopback_ip(), 0))
        a.runner.start()
        await asyncio.sleep(0.15)  # b latches onto a
        assert b.remote == a.local
        b.runner.start()
        a._sendto(b"\x80\xc8garbage")  # RTCP-looking junk, from the peer b latched onto
        a._sendto(b"\x00\x01\x00\x00")  # not RTP at all
        stranger.sendto(b"\x80\x00" + bytes(20), b.local)  # from a source b does not talk to
        await asyncio.sleep(0.5)
        stats_b = await b.runner.stop()
        stats_a = await a.runner.stop(linger=0.1)
    finally:
        stranger.close()
        a.close()
        b.close()
        await asyncio.sleep(0)
    assert stats_b.malformed == 2 and b.foreign == 1
    assert stats_b.lost == 0 and stats_b.packets_received >= 15  # 3 packets per frame, 10 frames/s
    assert stats_a.packets_received > 0


async def test_send_errors_are_counted_not_raised() -> None:
    def refuse(data: bytes) -> None:
        raise ConnectionRefusedError("no route")

    runner = MediaRunner(MediaSession(audio_profile(), 1, random.Random(1)), refuse)
    stats = await runner.run_for(0.1)
    assert runner.send_errors >= 5 and stats.packets_sent >= 5
