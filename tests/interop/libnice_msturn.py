"""libnice as an independent TURN / MS-TURN client: gather a relay candidate, then move data through it.

Run with the **system** python (Debian ``python3-gi`` + ``gir1.2-nice-0.1``), not the venv::

    /usr/bin/python3 tests/interop/libnice_msturn.py --server 127.86.1.1 --port 3478 --user U --password P \\
        --relay udp --compat oc2007r2 --local 127.86.5.1 --peer 127.86.5.2

What it does, all on one GLib main loop with one overall deadline (``--timeout``):

1. A ``Nice.Agent`` in ``--compat`` mode (OC2007R2 = MS-TURN as Lync/OCS speaks it; RFC5245 = RFC 5766
   TURN, for coturn) with ``force-relay``, UPnP off, and one local address (libnice skips loopback
   interfaces unless told). ``set_relay_info`` names the server: ``--relay udp``, ``tcp`` (TURN over TCP;
   MS 4-byte framing in OC2007R2 mode) or ``tls`` — in OC2007R2 mode libnice sends the MSOC **pseudo-TLS**
   hello, then the framed MS-TURN (libnice wraps only ``NICE_RELAY_TYPE_TURN_TLS`` in
   ``nice_pseudossl_socket_new(..., MSOC)``). OC2007 modes base64-decode the username and password (MRAS
   hands them out base64), so the plain ``--user``/``--password`` are base64-encoded first. For tcp/tls
   ``ice-tcp`` is on: libnice 0.1.21 frames OC2007 TCP correctly (``02 00`` + RFC 4571 length + message)
   only from a TCP host candidate; from the UDP one it writes ``03 00`` + the bare message.
2. ``gather_candidates``; on ``candidate-gathering-done`` the candidates are printed as JSON (libnice's own
   SDP lines: GI reads NiceCandidate's fields after ``addr`` at wrong offsets).
3. A plain UDP socket peer on ``--peer`` (no ICE, no STUN) becomes a remote candidate (from an SDP line) and
   the pair (our relay candidate, the peer) is selected with ``set_selected_pair`` — no connectivity checks,
   nothing on the peer answers them. ``nice_agent_send`` then goes out through the relay: MS-TURN Send
   requests (which also open the implicit permission for the peer) and one Set Active Destination; RFC:
   CreatePermission/ChannelBind first. The peer echoes ``ECHO`` + payload to the relayed address it came
   from, and that must reach libnice's receive callback through the server. From a TCP relay candidate
   libnice sends ICE-TCP style (RFC 4571 length + packet inside DATA), and the peer answers in kind.
   Sends repeat every 200 ms until the echo arrives (``--max-sends``).

Output: one JSON object per line, ``{"event": ...}``; the last line is ``{"event": "result", "ok": bool,
...}``. Exit 0 only if a relay candidate was gathered **and** the echo came back through it.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import socket
import sys
import time

import gi

gi.require_version("Nice", "0.1")
from gi.repository import GLib, Nice  # noqa: E402

COMPAT = {"oc2007r2": Nice.Compatibility.OC2007R2, "rfc5245": Nice.Compatibility.RFC5245}
RELAY = {"udp": Nice.RelayType.UDP, "tcp": Nice.RelayType.TCP, "tls": Nice.RelayType.TLS}
CANDIDATE_TYPES = {
    Nice.CandidateType.HOST: "host", Nice.CandidateType.SERVER_REFLEXIVE: "srflx",
    Nice.CandidateType.PEER_REFLEXIVE: "prflx", Nice.CandidateType.RELAYED: "relay",
}
COMPONENT = 1
ECHO = b"ECHO"  # 4 bytes: a 4-aligned payload stays 4-aligned on the way back


# nice_agent_attach_recv() is not in the GI bindings (its callback type is not introspectable), GI's
# nice_agent_recv_nonblocking() passes a garbage buf_len (libnice debug: "Buffer ... length: 532799616") and
# GI's nice_agent_send() wants a NUL-terminated str, so receive and send go through ctypes on the agent's C
# pointer. A NULL context means the default main context, which the agent and GLib.MainLoop() use.
_LIBNICE = ctypes.CDLL("libnice.so.10")
_RECV_FUNC = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_char), ctypes.c_void_p,
)
_LIBNICE.nice_agent_attach_recv.argtypes = [
    ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, _RECV_FUNC, ctypes.c_void_p,
]
_LIBNICE.nice_agent_attach_recv.restype = ctypes.c_int
_LIBNICE.nice_agent_send.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, ctypes.c_char_p]
_LIBNICE.nice_agent_send.restype = ctypes.c_int
ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _pointer(agent: Nice.Agent) -> int:
    return int(ctypes.pythonapi.PyCapsule_GetPointer(agent.__gpointer__, None))


def send(agent: Nice.Agent, stream: int, data: bytes) -> int:
    """nice_agent_send() with binary data (the GI binding takes a NUL-terminated gchar*)."""
    return int(_LIBNICE.nice_agent_send(_pointer(agent), stream, COMPONENT, len(data), data))


def attach_recv(agent: Nice.Agent, stream: int, callback: object) -> object:
    """Attach ``callback(bytes)`` to stream/component 1 on the default main context; keep the result alive."""
    pointer = _pointer(agent)

    def trampoline(_agent: int, _stream: int, _component: int, length: int, buf: object, _data: int) -> None:
        callback(ctypes.string_at(buf, length))  # type: ignore[operator]

    c_callback = _RECV_FUNC(trampoline)
    if not _LIBNICE.nice_agent_attach_recv(pointer, stream, COMPONENT, None, c_callback, None):
        raise RuntimeError("nice_agent_attach_recv failed")
    return c_callback


def candidate_sdp(agent: Nice.Agent, candidate: Nice.Candidate) -> str:
    """libnice's own SDP line for a candidate: GI reads NiceCandidate's fields after ``addr`` at wrong
    offsets (foundation comes back empty and priority random), so foundation/priority come from here."""
    return str(agent.generate_local_candidate_sdp(candidate)).strip()


def foundation_of(agent: Nice.Agent, candidate: Nice.Candidate) -> str:
    return candidate_sdp(agent, candidate).split()[0].split(":", 1)[1]  # "a=candidate:FOUNDATION 1 UDP ..."


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def address_of(candidate: Nice.Candidate) -> tuple[str, int]:
    return candidate.addr.dup_string(), candidate.addr.get_port()


def describe(agent: Nice.Agent, candidate: Nice.Candidate) -> dict[str, object]:
    host, port = address_of(candidate)
    return {
        "type": CANDIDATE_TYPES.get(candidate.type, str(candidate.type)), "host": host, "port": port,
        "sdp": candidate_sdp(agent, candidate),
    }


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.context = self.loop.get_context()
        self.result: dict[str, object] = {"ok": False, "relay_candidates": [], "echoes": 0, "sends": 0}
        stamp = b"edgesim-libnice-" + str(time.monotonic_ns()).encode()
        self.payload = (stamp + b"." * args.payload_size)[: args.payload_size]
        self.agent = Nice.Agent.new(self.context, COMPAT[args.compat])
        self.agent.set_property("upnp", False)
        self.agent.set_property("force-relay", True)
        # TURN over TCP/TLS: libnice only frames OC2007 TCP correctly (type, 0, RFC 4571 length) from a TCP host
        # candidate (a "reliable" socket); from the UDP host candidate it writes 03 00 + the bare message.
        self.agent.set_property("ice-tcp", args.relay != "udp")
        self.agent.set_property("controlling-mode", True)
        local = Nice.Address.new()
        local.set_from_string(args.local)
        self.agent.add_local_address(local)
        self.stream = self.agent.add_stream(1)
        # OC2007/MSN modes base64-DECODE the relay username and password (MRAS hands them out base64) and
        # put the decoded bytes on the wire; "alice" would become 3 bytes 6a 58 9c. So encode them here.
        user, password = args.user, args.password
        if args.compat == "oc2007r2":
            user, password = (base64.b64encode(v.encode()).decode() for v in (user, password))
        ok = self.agent.set_relay_info(
            self.stream, COMPONENT, args.server, args.port, user, password, RELAY[args.relay],
        )
        emit("relay-info", ok=bool(ok), server=args.server, port=args.port, relay=args.relay, compat=args.compat)
        self.agent.connect("candidate-gathering-done", self.on_gathering_done)
        self.agent.connect("component-state-changed", self.on_state)
        self.receiver = attach_recv(self.agent, self.stream, self.on_receive)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind((args.peer, 0))
        self.peer.setblocking(False)
        self.peer_address = self.peer.getsockname()
        GLib.io_add_watch(self.peer.fileno(), GLib.IO_IN, self.on_peer_readable)
        self.sender: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> dict[str, object]:
        GLib.timeout_add(int(self.args.timeout * 1000), self.on_deadline)
        if not self.agent.gather_candidates(self.stream):
            self.finish("gather_candidates returned FALSE")
        else:
            self.loop.run()
        self.peer.close()
        self.agent.remove_stream(self.stream)
        self.agent.close_async(None, None)
        return self.result

    def finish(self, reason: str) -> bool:
        self.result["reason"] = reason
        if self.loop.is_running():
            self.loop.quit()
        return False

    def on_deadline(self) -> bool:
        return self.finish(f"deadline {self.args.timeout} s")

    # -- libnice signals ---------------------------------------------------------------------
    def on_state(self, agent: Nice.Agent, stream: int, component: int, state: int) -> None:
        emit("component-state", state=Nice.component_state_to_string(state))

    def on_gathering_done(self, agent: Nice.Agent, stream: int) -> None:
        candidates = agent.get_local_candidates(stream, COMPONENT)
        for candidate in candidates:
            emit("local-candidate", **describe(agent, candidate))
        relays = [c for c in candidates if c.type == Nice.CandidateType.RELAYED]
        self.result["relay_candidates"] = [describe(agent, c) for c in relays]
        if not relays:
            self.finish("no relay candidate gathered")
            return
        # The peer is a plain socket: give it to libnice as a host candidate and select it, no checks.
        # GI cannot assign NiceCandidate.addr (a union field), so the candidate comes from an SDP line.
        line = f"a=candidate:peer1 {COMPONENT} UDP 1 {self.peer_address[0]} {self.peer_address[1]} typ host"
        remote = agent.parse_remote_candidate_sdp(stream, line)
        if remote is None:
            self.finish(f"libnice could not parse {line!r}")
            return
        username, password = agent.get_local_credentials(stream)[1:]
        agent.set_remote_credentials(stream, username or "peeruser", password or "peerpassword")
        added = agent.set_remote_candidates(stream, COMPONENT, [remote])
        # Select the pair (our relay candidate, the peer) by foundation: set_selected_remote_candidate() would
        # pick the best local candidate, which is the host one even with force-relay (seen against coturn).
        foundation = foundation_of(agent, relays[0])
        selected = agent.set_selected_pair(stream, COMPONENT, foundation, "peer1")
        emit("selected-pair", local_foundation=foundation)
        emit("peer", address=list(self.peer_address), added=added, selected=bool(selected))
        if not selected:
            self.finish("set_selected_remote_candidate failed")
            return
        self.send_payload()
        self.sender = GLib.timeout_add(200, self.send_payload)

    def send_payload(self) -> bool:
        if self.result["echoes"]:
            return False
        if int(self.result["sends"]) >= self.args.max_sends:  # type: ignore[call-overload]
            self.finish(f"no echo after {self.args.max_sends} sends")
            return False
        sent = send(self.agent, self.stream, self.payload)
        self.result["sends"] = int(self.result["sends"]) + 1  # type: ignore[call-overload]
        emit("send", bytes=sent)
        return True

    def on_receive(self, data: bytes) -> None:
        emit("receive", length=len(data), head=data[:48].decode(errors="replace"))
        if data.rstrip(b"\0") == ECHO + self.payload and data != ECHO + self.payload:
            self.result["padded_receive"] = len(data) - len(ECHO + self.payload)  # NULs appended in transit
        if data == ECHO + self.payload:
            self.result["echoes"] = int(self.result["echoes"]) + 1  # type: ignore[call-overload]
            self.result["ok"] = True
            self.finish("echo received through the relay")

    # -- the plain UDP peer ------------------------------------------------------------------
    def on_peer_readable(self, fd: int, condition: int) -> bool:
        for _ in range(64):
            try:
                data, source = self.peer.recvfrom(65536)
            except BlockingIOError:
                break
            if data == self.payload:
                self.result["peer_saw_payload_from"] = list(source)  # must be the relayed address
            emit("peer-received", source=list(source), length=len(data), raw=data[:24].hex())
            framed = self.args.relay != "udp"
            if framed:
                # From a TCP relay candidate libnice sends ICE-TCP style: RFC 4571 length, then the packet.
                if len(data) < 2 or int.from_bytes(data[:2], "big") != len(data) - 2:
                    continue
                data = data[2:]
            if data[:1] in (b"\x00", b"\x01"):
                continue  # a STUN connectivity check or keepalive from libnice: a plain socket ignores it
            if data == self.payload:
                self.result["peer_saw_payload_from"] = list(source)  # must be the relayed address
            reply = ECHO + data
            self.peer.sendto(len(reply).to_bytes(2, "big") + reply if framed else reply, source)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--relay", choices=sorted(RELAY), default="udp")
    parser.add_argument("--compat", choices=sorted(COMPAT), default="oc2007r2")
    parser.add_argument("--local", required=True, help="local address libnice binds (a 127.x.y.z)")
    parser.add_argument("--peer", required=True, help="address of the plain UDP echo peer")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--max-sends", type=int, default=25)
    parser.add_argument("--payload-size", type=int, default=32, help="bytes per datagram (>= 28)")
    args = parser.parse_args(argv)
    emit("versions", python=sys.version.split()[0], gi=gi.__version__,
         nice=getattr(Nice, "_version", "0.1"))
    result = Run(args).run()
    emit("result", **result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
