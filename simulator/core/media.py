"""A media stream, sans-I/O: RTP at a profile's rate, RTCP SR/RR, and RFC 3550 receiver statistics.

Theory of operation
-------------------
A :class:`MediaSession` is one end of an RTP session (RFC 3550) on one transport address (RTP and RTCP
multiplexed, RFC 5761): it sends one stream — SSRC ``ssrc`` — and receives the peer's. The shell calls

* ``datagrams_to_send(now)`` → the RTP packets whose frame time has come (frame *k* is due at
  ``start + k × frame_interval`` and carries timestamp ``ts0 + k × samples_per_frame``: the sampling
  instant, so any lateness of the shell shows up as jitter at the receiver, as it would for a real
  sender), and the compound RTCP report when its time has come. The first call starts the session.
* ``receive(data, now)`` for every datagram from the peer (bad input is counted in ``malformed``).
* ``get_timer()`` → when to call ``datagrams_to_send`` next (``None`` once stopped and drained).
* ``stats()`` → :class:`MediaStats`; ``stats().columns()`` names them as the Skype for Business Network
  Assessment Tool does (``PacketLossRate``, ``RoundTripLatencyInMs``, ``AverageJitterInMs``,
  ``PacketReorderRatio``, ``PacketsSent``, ``PacketsReceived``).
* ``stop(now)`` → the next ``datagrams_to_send`` returns a last RTCP report with a BYE (§6.3.7).

Profiles (:class:`MediaProfile`): audio sends one packet per frame, 50 frames/s by default, with the
codec's payload size (:data:`AUDIO_CODECS`, overridable); video sends ``frame_rate`` frames/s of
``frame_size`` octets, each split into packets of at most ``max_payload`` octets with one timestamp and
the marker bit on the last (RFC 3551 §4.1).

Receiver statistics follow RFC 3550 Appendix A for the first remote SSRC seen:

* source validation and the extended highest sequence number (A.1: probation of ``MIN_SEQUENTIAL``
  packets, ``MAX_DROPOUT``, ``MAX_MISORDER``); the first probation packet is not counted.
* loss (A.3): expected = extended max − base + 1, lost = expected − received (negative with
  duplicates); fraction lost per report interval for the RR.
* interarrival jitter (A.8): ``J += (|D(i−1, i)| − J) / 16`` in timestamp units, where D is the change
  in transit time; reported in timestamp units and in ms. ``AverageJitterInMs`` is the mean of J over
  all packets received (the estimator sampled at each arrival).
* reorder: a packet whose extended sequence number is below the highest already received and that was
  not received before; duplicates are counted apart. ``PacketReorderRatio`` = reordered / received.
* RTT (§6.4.1): when a report block about our SSRC comes back, ``RTT = A − LSR − DLSR`` with A the
  arrival time as the middle 32 bits of our NTP clock (``now + ntp_offset``).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from simulator.wire.rtp import (
    NTP_UNIX_OFFSET,
    Goodbye,
    ParseError,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    classify,
    encode_compound,
    ntp_from_seconds,
    ntp_middle32,
    pack_rtp,
    parse_compound,
    rtp_header,
)

RTP_SEQ_MOD: Final = 1 << 16
MAX_DROPOUT: Final = 3000  # RFC 3550 A.1
MAX_MISORDER: Final = 100  # RFC 3550 A.1
MIN_SEQUENTIAL: Final = 2  # RFC 3550 A.1
RTCP_MIN_INTERVAL: Final = 5.0  # RFC 3550 §6.2: the recommended minimum report interval, seconds
RTCP_COMPENSATION: Final = math.e - 1.5  # RFC 3550 §6.3.1: divide the randomised interval by e − 3/2
MAX_FRAMES_PER_CALL: Final = 50  # a late shell catches up in bursts of at most this many frames
_DUPLICATE_WINDOW: Final = 1024  # extended sequence numbers remembered to tell a duplicate from a reorder


@dataclass(frozen=True, slots=True)
class Codec:
    """An audio codec as sent: payload type, RTP clock rate, payload octets per 20 ms packet."""

    name: str
    payload_type: int
    clock_rate: int
    payload_size: int


# Payload sizes per 20 ms packet from the codecs' bit rates (octets = kbit/s × 20 ms / 8). G.711 and
# G.722: RFC 3551 §4.5 (64 kbit/s; G.722's RTP clock is 8000 by §4.5.2). Lync's codecs: nominal maximum
# payload bit rates of Microsoft's Lync Server 2013 bandwidth table (SILK WB 36, SILK NB 20, RTAudio WB
# 29, RTAudio NB 11.8, Siren 16 kbit/s) and the dynamic payload types Lync offers in its SDP.
AUDIO_CODECS: Final[Mapping[str, Codec]] = {
    "PCMU": Codec("PCMU", 0, 8000, 160),
    "PCMA": Codec("PCMA", 8, 8000, 160),
    "G722": Codec("G722", 9, 8000, 160),
    "SILK-WB": Codec("SILK", 103, 16000, 90),
    "SILK-NB": Codec("SILK", 104, 8000, 50),
    "RTAudio-WB": Codec("x-msrta", 114, 16000, 73),
    "RTAudio-NB": Codec("x-msrta", 115, 8000, 30),
    "Siren": Codec("SIREN", 111, 16000, 40),
}


@dataclass(frozen=True, slots=True)
class MediaProfile:
    """What a session sends: ``frame_rate`` frames/s of ``frame_size`` octets, split at ``max_payload``."""

    kind: Literal["audio", "video"]
    codec: str
    payload_type: int
    clock_rate: int
    frame_rate: float
    frame_size: int
    max_payload: int = 1200
    rtcp_interval: float = RTCP_MIN_INTERVAL

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type <= 127 or 64 <= self.payload_type <= 95:
            raise ValueError("payload type is 0..127 and not 64..95 (RFC 5761 §4: RTCP shares the port)")
        if self.clock_rate <= 0 or self.frame_rate <= 0 or self.frame_size <= 0 or self.max_payload <= 0:
            raise ValueError("clock rate, frame rate, frame size and max payload must be positive")
        if self.rtcp_interval <= 0:
            raise ValueError("rtcp_interval must be positive")

    @property
    def frame_interval(self) -> float:
        return 1.0 / self.frame_rate

    @property
    def samples_per_frame(self) -> int:
        return round(self.clock_rate / self.frame_rate)

    @property
    def packets_per_frame(self) -> int:
        return -(-self.frame_size // self.max_payload)


def audio_profile(
    codec: str = "SILK-WB",
    *,
    packets_per_second: float = 50.0,
    payload_size: int | None = None,
    codecs: Mapping[str, Codec] = AUDIO_CODECS,
    rtcp_interval: float = RTCP_MIN_INTERVAL,
) -> MediaProfile:
    """An audio profile: one packet per frame, ``packets_per_second`` (50: 20 ms ptime).

    ``payload_size`` overrides the codec table's octets per packet (the table's are per 20 ms; scaled
    to the ptime when not given).
    """
    entry = codecs[codec]
    size = payload_size if payload_size is not None else max(1, round(entry.payload_size * 50.0 / packets_per_second))
    return MediaProfile(
        "audio", entry.name, entry.payload_type, entry.clock_rate, packets_per_second, size, size, rtcp_interval
    )


def video_profile(
    *,
    frame_rate: float = 30.0,
    frame_size: int = 6250,
    max_payload: int = 1200,
    codec: str = "H264",
    payload_type: int = 122,
    clock_rate: int = 90000,
    rtcp_interval: float = RTCP_MIN_INTERVAL,
) -> MediaProfile:
    """A video profile (defaults: 30 frames/s of 6,250 octets, 1.5 Mbit/s; PT 122 as Lync's X-H264UC)."""
    return MediaProfile("video", codec, payload_type, clock_rate, frame_rate, frame_size, max_payload, rtcp_interval)


@dataclass(frozen=True, slots=True)
class MediaStats:
    """One session's figures; ``columns()`` gives them under the Network Assessment Tool's names."""

    packets_sent: int
    bytes_sent: int  # RTP datagram octets (header + payload)
    packets_received: int  # RTP packets from the remote source, duplicates included
    bytes_received: int
    rtcp_sent: int
    rtcp_received: int
    malformed: int  # datagrams that were neither valid RTP nor valid RTCP
    expected: int  # RFC 3550 A.3
    lost: int  # RFC 3550 A.3: expected − received (negative with duplicates)
    duplicates: int
    reordered: int
    loss_rate: float  # max(lost, 0) / expected, 0..1
    jitter: float  # RFC 3550 A.8 estimator now, timestamp units
    jitter_ms: float
    average_jitter_ms: float
    max_jitter_ms: float
    rtt_ms: float | None  # mean of the RTT samples
    rtt_min_ms: float | None
    rtt_max_ms: float | None
    rtt_samples: int
    remote_fraction_lost: float | None  # what the peer's last report says about our stream, 0..1
    remote_cumulative_lost: int | None
    remote_jitter_ms: float | None

    @property
    def reorder_ratio(self) -> float:
        return self.reordered / self.packets_received if self.packets_received else 0.0

    def columns(self) -> dict[str, float | int | None]:
        """The Network Assessment Tool's ``performance_results.tsv`` columns, and edgesim's extras."""
        return {
            "PacketLossRate": self.loss_rate,
            "RoundTripLatencyInMs": self.rtt_ms,
            "PacketsSent": self.packets_sent,
            "PacketsReceived": self.packets_received,
            "AverageJitterInMs": self.average_jitter_ms,
            "PacketReorderRatio": self.reorder_ratio,
            "BytesSent": self.bytes_sent,
            "BytesReceived": self.bytes_received,
            "PacketsLost": self.lost,
            "JitterInMs": self.jitter_ms,
            "MaxJitterInMs": self.max_jitter_ms,
        }


class _Source:
    """Receiver state for one remote SSRC (RFC 3550 A.1, A.3, A.8)."""

    def __init__(self, ssrc: int, sequence: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._init_seq(sequence)
        self.max_seq = (sequence - 1) % RTP_SEQ_MOD  # A.1: a new source starts on probation
        self.probation = MIN_SEQUENTIAL
        self.duplicates = 0
        self.reordered = 0
        self.jitter = 0.0
        self.jitter_sum = 0.0
        self.jitter_max = 0.0
        self.jitter_samples = 0
        self._last_arrival: float | None = None
        self._last_timestamp = 0
        self._recent: deque[int] = deque(maxlen=_DUPLICATE_WINDOW)
        self._recent_set: set[int] = set()

    def _init_seq(self, sequence: int) -> None:
        self.base_seq = sequence
        self.max_seq = sequence
        self.bad_seq = RTP_SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def _update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1 ``update_seq``: whether the packet counts."""
        udelta = (seq - self.max_seq) % RTP_SEQ_MOD
        if self.probation:
            if seq == (self.max_seq + 1) % RTP_SEQ_MOD:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    self._remember(self.cycles + seq)
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:  # in order, with a permissible gap
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD  # sequence number wrapped
            self.max_seq = seq
            extended = self.cycles + seq
            if udelta == 0 and extended in self._recent_set:
                self.duplicates += 1
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:  # a very large jump
            if seq == self.bad_seq:  # two sequential packets: the sender restarted; resync
                self._init_seq(seq)
                self._recent.clear()
                self._recent_set.clear()
                extended = seq
            else:
                self.bad_seq = (seq + 1) % RTP_SEQ_MOD
                return False
        else:  # duplicate or reordered packet
            extended = self.cycles + seq if seq <= self.max_seq else self.cycles - RTP_SEQ_MOD + seq
            if extended in self._recent_set:
                self.duplicates += 1
            else:
                self.reordered += 1
        self.received += 1
        self._remember(extended)
        return True

    def _remember(self, extended: int) -> None:
        recent = self._recent
        if extended in self._recent_set:
            return
        if len(recent) == recent.maxlen:
            self._recent_set.discard(recent[0])
        recent.append(extended)
        self._recent_set.add(extended)

    def receive(self, sequence: int, timestamp: int, now: float) -> bool:
        if not self._update_seq(sequence):
            return False
        # RFC 3550 A.8: D(i-1,i) = (R_i − R_{i−1}) − (S_i − S_{i−1}) in timestamp units
        if self._last_arrival is not None:
            sent_delta = (timestamp - self._last_timestamp) & 0xFFFFFFFF
            if sent_delta >= 1 << 31:
                sent_delta -= 1 << 32
            d = (now - self._last_arrival) * self.clock_rate - sent_delta
            self.jitter += (abs(d) - self.jitter) / 16.0
            self.jitter_sum += self.jitter
            self.jitter_samples += 1
            if self.jitter > self.jitter_max:
                self.jitter_max = self.jitter
        self._last_arrival = now
        self._last_timestamp = timestamp
        return True

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return 0 if self.probation else self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        return self.expected - self.received

    def report_block(self, lsr: int, dlsr: int) -> ReportBlock:
        """RFC 3550 A.3: the interval's fraction lost and the cumulative loss, clamped to 24 bits."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval == 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        lost = max(-0x800000, min(0x7FFFFF, self.lost))
        return ReportBlock(
            self.ssrc,
            min(fraction, 255),
            lost,
            self.extended_max & 0xFFFFFFFF,
            int(self.jitter) & 0xFFFFFFFF,
            lsr,
            dlsr,
        )


class MediaSession:
    """One end of an RTP session: sends ``profile``'s stream as ``ssrc``, measures the peer's.

    ``rng`` draws the initial sequence number and timestamp (RFC 3550 §5.1: random) and the RTCP
    interval randomisation (§6.3.1). ``ntp_offset`` turns ``now`` into NTP seconds for SR timestamps
    (the default makes ``now`` Unix time). ``cname`` is the SDES CNAME (§6.5.1).
    """

    def __init__(
        self,
        profile: MediaProfile,
        ssrc: int,
        rng: random.Random,
        *,
        cname: str | None = None,
        ntp_offset: float = NTP_UNIX_OFFSET,
    ) -> None:
        if not 0 <= ssrc <= 0xFFFFFFFF:
            raise ValueError("SSRC is 32 bits")
        self.profile = profile
        self.ssrc = ssrc
        self.cname = cname or f"{ssrc:08x}@edgesim"
        self._rng = rng
        self._ntp_offset = ntp_offset
        self._seq = rng.randrange(RTP_SEQ_MOD)
        self._ts0 = rng.getrandbits(32)
        self._start: float | None = None
        self._frame = 0
        self._next_frame = 0.0
        self._next_rtcp = 0.0
        self._stopping: float | None = None
        self._stopped = False
        self._frame_payloads = self._split(profile)
        self._samples = profile.samples_per_frame
        self._interval = profile.frame_interval
        self.packets_sent = 0
        self.octets_sent = 0  # payload octets (the SR's sender's octet count, §6.4.1)
        self.bytes_sent = 0
        self.rtcp_sent = 0
        self.rtcp_received = 0
        self.packets_received = 0
        self.bytes_received = 0
        self.malformed = 0
        self.foreign = 0  # RTP from another SSRC than the first one seen
        self._source: _Source | None = None
        self._remote_ssrc: int | None = None
        self._lsr = 0
        self._lsr_arrival = 0.0
        self._rtt: list[float] = []
        self._remote_block: ReportBlock | None = None

    @staticmethod
    def _split(profile: MediaProfile) -> tuple[bytes, ...]:
        full, rest = divmod(profile.frame_size, profile.max_payload)
        sizes = [profile.max_payload] * full + ([rest] if rest else [])
        return tuple(bytes(size) for size in sizes)

    # ------------------------------------------------------------------ sending

    def start(self, now: float) -> None:
        """Start sending at ``now`` (``datagrams_to_send`` does it on its first call)."""
        if self._start is not None:
            return
        self._start = now
        self._next_frame = now
        # RFC 3550 §6.3.6 / §6.2: the first report after half the minimum interval, randomised
        self._next_rtcp = now + self._rtcp_delay(self.profile.rtcp_interval / 2)

    def stop(self, now: float) -> None:
        """Stop sending: the next ``datagrams_to_send`` returns a final report with a BYE."""
        if self._start is None:
            self._stopped = True
        elif not self._stopped and self._stopping is None:
            self._stopping = now

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _rtcp_delay(self, interval: float) -> float:
        return interval * self._rng.uniform(0.5, 1.5) / RTCP_COMPENSATION  # RFC 3550 §6.3.1

    def get_timer(self) -> float | None:
        """When to call ``datagrams_to_send`` next; ``None`` before the start and after the stop."""
        if self._start is None or self._stopped:
            return None
        if self._stopping is not None:
            return self._stopping
        return min(self._next_frame, self._next_rtcp)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The RTP packets due by ``now`` and the RTCP report when due (a BYE after ``stop``)."""
        if self._stopped:
            return []
        if self._start is None:
            self.start(now)
        if self._stopping is not None:
            self._stopped = True
            return [self._rtcp(now, bye=True)]
        out: list[bytes] = []
        frames = 0
        while self._next_frame <= now and frames < MAX_FRAMES_PER_CALL:
            self._send_frame(out)
            frames += 1
        if self._next_rtcp <= now:
            out.append(self._rtcp(now, bye=False))
            self._next_rtcp = now + self._rtcp_delay(self.profile.rtcp_interval)
        return out

    def _send_frame(self, out: list[bytes]) -> None:
        assert self._start is not None
        timestamp = (self._ts0 + self._frame * self._samples) & 0xFFFFFFFF
        payloads = self._frame_payloads
        last = len(payloads) - 1
        video = self.profile.kind == "video"
        pt = self.profile.payload_type
        for index, payload in enumerate(payloads):
            # RFC 3551 §4.1: video marks the last packet of a frame; audio the first of a talkspurt
            marker = index == last if video else self._frame == 0
            data = pack_rtp(pt, marker, self._seq, timestamp, self.ssrc, payload)
            self._seq = (self._seq + 1) % RTP_SEQ_MOD
            out.append(data)
            self.packets_sent += 1
            self.octets_sent += len(payload)
            self.bytes_sent += len(data)
        self._frame += 1
        self._next_frame = self._start + self._frame * self._interval

    def _ntp(self, now: float) -> int:
        return ntp_from_seconds(now + self._ntp_offset)

    def _rtcp(self, now: float, *, bye: bool) -> bytes:
        assert self._start is not None
        blocks: tuple[ReportBlock, ...] = ()
        if self._source is not None and not self._source.probation:
            dlsr = int((now - self._lsr_arrival) * 65536) if self._lsr else 0  # §6.4.1: 1/65536 s
            blocks = (self._source.report_block(self._lsr, dlsr & 0xFFFFFFFF),)
        packets: list[RtcpPacket] = []
        if self.packets_sent:  # §6.4: an SR when this end has sent data
            rtp_ts = (self._ts0 + round((now - self._start) * self.profile.clock_rate)) & 0xFFFFFFFF
            packets.append(
                SenderReport(
                    self.ssrc,
                    self._ntp(now),
                    rtp_ts,
                    self.packets_sent & 0xFFFFFFFF,
                    self.octets_sent & 0xFFFFFFFF,
                    blocks,
                )
            )
        else:
            packets.append(ReceiverReport(self.ssrc, blocks))
        packets.append(SourceDescription.with_cname(self.ssrc, self.cname))  # §6.1: every compound has CNAME
        if bye:
            packets.append(Goodbye((self.ssrc,)))
        self.rtcp_sent += 1
        return encode_compound(packets)

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes, now: float) -> None:
        """One datagram from the peer; invalid ones are counted in ``malformed`` and dropped."""
        kind = classify(data)
        try:
            if kind == "rtp":
                self._receive_rtp(rtp_header(data), len(data), now)
            elif kind == "rtcp":
                self._receive_rtcp(parse_compound(data), now)
            else:
                self.malformed += 1
        except ParseError:
            self.malformed += 1

    def _receive_rtp(self, header: tuple[int, int, int, int], size: int, now: float) -> None:
        _, sequence, timestamp, ssrc = header
        if ssrc == self.ssrc:
            self.foreign += 1  # our own stream looped back (or an SSRC collision, §8.2)
            return
        if self._remote_ssrc is None:
            self._remote_ssrc = ssrc
        if ssrc != self._remote_ssrc:
            self.foreign += 1
            return
        source = self._source
        if source is None:
            source = self._source = _Source(ssrc, sequence, self.profile.clock_rate)
        self.packets_received += 1
        self.bytes_received += size
        source.receive(sequence, timestamp, now)

    def _receive_rtcp(self, packets: list[RtcpPacket], now: float) -> None:
        self.rtcp_received += 1
        for packet in packets:
            if isinstance(packet, SenderReport):
                if self._remote_ssrc is None and packet.ssrc != self.ssrc:
                    self._remote_ssrc = packet.ssrc
                if packet.ssrc == self._remote_ssrc:
                    self._lsr = ntp_middle32(packet.ntp_timestamp)  # §6.4.1 LSR
                    self._lsr_arrival = now
                self._read_blocks(packet.reports, now)
            elif isinstance(packet, ReceiverReport):
                self._read_blocks(packet.reports, now)

    def _read_blocks(self, blocks: tuple[ReportBlock, ...], now: float) -> None:
        for block in blocks:
            if block.ssrc != self.ssrc:
                continue
            self._remote_block = block
            if block.lsr == 0:  # §6.4.1: no SR received yet by the peer
                continue
            arrival = ntp_middle32(self._ntp(now))
            rtt = (arrival - block.lsr - block.dlsr) & 0xFFFFFFFF  # §6.4.1: A − LSR − DLSR, 1/65536 s
            if rtt < 1 << 31:  # a negative RTT (a peer's bad DLSR) wraps to a huge value: ignore it
                self._rtt.append(rtt / 65536.0)

    # ------------------------------------------------------------------ statistics

    def stats(self) -> MediaStats:
        source = self._source
        clock = self.profile.clock_rate
        if source is None:
            expected = lost = duplicates = reordered = 0
            jitter = average = maximum = 0.0
        else:
            expected, lost = source.expected, source.lost
            duplicates, reordered = source.duplicates, source.reordered
            jitter = source.jitter
            average = source.jitter_sum / source.jitter_samples if source.jitter_samples else 0.0
            maximum = source.jitter_max
        rtt = self._rtt
        block = self._remote_block
        return MediaStats(
            packets_sent=self.packets_sent,
            bytes_sent=self.bytes_sent,
            packets_received=self.packets_received,
            bytes_received=self.bytes_received,
            rtcp_sent=self.rtcp_sent,
            rtcp_received=self.rtcp_received,
            malformed=self.malformed,
            expected=expected,
            lost=lost,
            duplicates=duplicates,
            reordered=reordered,
            loss_rate=max(lost, 0) / expected if expected > 0 else 0.0,
            jitter=jitter,
            jitter_ms=jitter * 1000.0 / clock,
            average_jitter_ms=average * 1000.0 / clock,
            max_jitter_ms=maximum * 1000.0 / clock,
            rtt_ms=1000.0 * sum(rtt) / len(rtt) if rtt else None,
            rtt_min_ms=1000.0 * min(rtt) if rtt else None,
            rtt_max_ms=1000.0 * max(rtt) if rtt else None,
            rtt_samples=len(rtt),
            remote_fraction_lost=None if block is None else block.fraction_lost / 256.0,
            remote_cumulative_lost=None if block is None else block.cumulative_lost,
            remote_jitter_ms=None if block is None else block.jitter * 1000.0 / clock,
        )
