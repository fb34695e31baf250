"""Codec micro-benchmark: µs per parse+serialize, and struct vs aioquic Buffer for the byte work.

    .venv/bin/python benchmarks/codec.py [--runs 5] [--number 20000] [--compare]

Prints the median of ``--runs`` timings of ``--number`` iterations each (no randomness; seed n/a).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aioquic.buffer import Buffer

from simulator.wire import stun, turn
from simulator.wire.stun import Address, attr

KEY_SHORT = stun.short_term_key("VOkJxbRl1RmTxUk/WvJxBt")
KEY_LONG = stun.long_term_key("alice", "example.org", "secret")

BINDING = stun.request(
    stun.StunMethod.BINDING,
    bytes(range(12)),
    attr(stun.USERNAME, "evtj:h6vY"),
    attr(stun.PRIORITY, 0x6E0001FF),
    attr(stun.ICE_CONTROLLED, 0x932FF9B151263B36),
).serialize(KEY_SHORT, fingerprint=True)

ALLOCATE = stun.request(
    turn.TurnMethod.ALLOCATE,
    bytes(range(12)),
    attr(turn.REQUESTED_TRANSPORT, 17),
    attr(turn.LIFETIME, 600),
    attr(stun.USERNAME, "alice"),
    attr(stun.REALM, "example.org"),
    attr(stun.NONCE, "obMatJos2gAAAadl7W7PeDU4hKE72jda"),
    attr(turn.XOR_PEER_ADDRESS, Address("192.0.2.9", 4000)),
    dialect=turn.RFC,
).serialize(KEY_LONG, fingerprint=True)

PAYLOAD = bytes(100)
CHANNEL = turn.encode_channel_data(0x4001, PAYLOAD)


def binding() -> None:
    stun.parse(BINDING).serialize()


def allocate() -> None:
    msg = turn.parse(ALLOCATE)
    if not stun.verify_integrity(msg, KEY_LONG):
        raise AssertionError
    msg.serialize(KEY_LONG, fingerprint=True)


def channel_data() -> None:
    channel, payload = turn.decode_channel_data(CHANNEL)
    turn.encode_channel_data(channel, payload)


_HDR = struct.Struct("!HH")


def walk_struct() -> None:
    data = ALLOCATE
    _HDR.unpack_from(data, 0)
    pos, size = 20, len(data)
    while pos < size:
        _, length = _HDR.unpack_from(data, pos)
        data[pos + 4 : pos + 4 + length]
        pos += 4 + ((length + 3) & ~3)


def build_struct() -> None:
    out = bytearray(_HDR.pack(3, 0))
    for code in range(8):
        out += _HDR.pack(code, 4)
        out += b"\x00\x00\x02\x58"


def walk_buffer() -> None:
    buf = Buffer(data=ALLOCATE)
    buf.pull_uint16()
    buf.pull_uint16()
    buf.seek(20)
    while not buf.eof():
        buf.pull_uint16()
        length = buf.pull_uint16()
        buf.pull_bytes(length)
        buf.seek(buf.tell() + (-length & 3))


def build_buffer() -> None:
    buf = Buffer(capacity=128)
    buf.push_uint16(3)
    buf.push_uint16(0)
    for code in range(8):
        buf.push_uint16(code)
        buf.push_uint16(4)
        buf.push_bytes(b"\x00\x00\x02\x58")
    buf.data  # noqa: B018


def measure(fn: Callable[[], None], number: int, runs: int) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        timings.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--compare", action="store_true", help="also time struct vs aioquic Buffer")
    args = parser.parse_args()
    machine = f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}"
    print(f"# {machine}, median of {args.runs} x {args.number}")
    cases = [
        (f"Binding request ({len(BINDING)} B) parse+serialize", binding),
        (f"authenticated Allocate ({len(ALLOCATE)} B) parse+verify+serialize(MI+FP)", allocate),
        (f"ChannelData ({len(CHANNEL)} B) decode+encode", channel_data),
    ]
    if args.compare:
        cases += [
            ("attribute walk, struct", walk_struct),
            ("attribute walk, aioquic Buffer", walk_buffer),
            ("build 8 attributes, struct+bytearray", build_struct),
            ("build 8 attributes, aioquic Buffer", build_buffer),
        ]
    for name, fn in cases:
        print(f"{measure(fn, args.number, args.runs):8.2f} µs/op  {name}")


if __name__ == "__main__":
    main()
