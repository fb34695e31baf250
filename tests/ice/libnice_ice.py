"""libnice as a full ICE agent (``Nice.Compatibility.OC2007R2`` = MS-ICE2) talking to edgesim's agent.

Run with the **system** python (Debian ``python3-gi`` + ``gir1.2-nice-0.1``), not the venv; the test
(``tests/ice/test_libnice_ice.py``) drives it over stdin/stdout, one JSON object per line:

1. A ``Nice.Agent`` in ``--compat`` mode, UPnP off, one local address, ``force-relay`` (only the MS-TURN
   relay candidate from edgesim's A/V Edge is offered) unless ``--no-relay``, ``controlling-mode`` from
   ``--controlling``; ``--tcp-only`` offers RFC 6544 TCP host candidates only.
   OC2007 modes base64-decode the relay credentials, so they are base64-encoded here (as in
   tests/interop/libnice_msturn.py, whose ctypes send/receive helpers are reused).
2. On ``candidate-gathering-done`` it prints ``{"event": "gathered", "ufrag", "pwd", "candidates": [lines]}``.
3. It reads one line from stdin: ``{"ufrag", "pwd", "candidates": [a=candidate lines]}`` and starts checks.
4. ``new-selected-pair-full`` → ``{"event": "selected", "local": {...}, "remote": {...}}``; component
   states are printed as they change.
5. Every datagram it receives is printed (``{"event": "receive"}``) and echoed back as ``ECHO`` + data;
   once selected it sends ``--hello`` every 100 ms until something arrives.

Exit 0 when a pair was selected and a datagram went both ways, else 1, at the latest at ``--timeout``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))

import gi

gi.require_version("Nice", "0.1")
from gi.repository import GLib, Nice  # noqa: E402
from libnice_msturn import CANDIDATE_TYPES, COMPAT, attach_recv, candidate_sdp, emit, send  # noqa: E402

COMPONENT = 1


def describe(agent: Nice.Agent, candidate: Nice.Candidate) -> dict[str, object]:
    return {"type": CANDIDATE_TYPES.get(candidate.type, str(candidate.type)),
            "host": candidate.addr.dup_string(), "port": candidate.addr.get_port(),
            "sdp": candidate_sdp(agent, candidate)}


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.result: dict[str, object] = {"ok": False, "selected": None, "received": 0, "sent": 0}
        self.agent = Nice.Agent.new(self.loop.get_context(), COMPAT[args.compat])
        self.agent.set_property("upnp", False)
        self.agent.set_property("force-relay", not args.no_relay)
        if args.tcp_only:  # RFC 6544 host candidates only (libnice: ice-tcp on, ice-udp off)
            self.agent.set_property("ice-udp", False)
            self.agent.set_property("ice-tcp", True)
        self.agent.set_property("controlling-mode", args.controlling)
        local = Nice.Address.new()
        local.set_from_string(args.local)
        self.agent.add_local_address(local)
        self.stream = self.agent.add_stream(1)
        user, password = args.user, args.password
        if args.compat == "oc2007r2":
            user, password = (base64.b64encode(v.encode()).decode() for v in (user, password))
        if not args.no_relay:
            self.agent.set_relay_info(self.stream, COMPONENT, args.server, args.port, user, password,
                                      Nice.RelayType.UDP)
        self.agent.connect("candidate-gathering-done", self.on_gathered)
        self.agent.connect("component-state-changed", self.on_state)
        self.agent.connect("new-selected-pair-full", self.on_selected)
        self.receiver = attach_recv(self.agent, self.stream, self.on_receive)
        self.hello_timer: int | None = None

    def run(self) -> dict[str, object]:
        GLib.timeout_add(int(self.args.timeout * 1000), self.finish, f"deadline {self.args.timeout} s")
        if not self.agent.gather_candidates(self.stream):
            self.finish("gather_candidates returned FALSE")
        else:
            self.loop.run()
        self.agent.remove_stream(self.stream)
        self.agent.close_async(None, None)
        return self.result

    def finish(self, reason: str) -> bool:
        self.result.setdefault("reason", reason)
        if self.loop.is_running():
            self.loop.quit()
        return False

    def on_gathered(self, agent: Nice.Agent, stream: int) -> None:
        candidates = agent.get_local_candidates(stream, COMPONENT)
        _, ufrag, pwd = agent.get_local_credentials(stream)
        emit("gathered", ufrag=ufrag, pwd=pwd, candidates=[candidate_sdp(agent, c) for c in candidates],
             described=[describe(agent, c) for c in candidates])
        GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, self.on_stdin)

    def on_stdin(self, fd: int, condition: int) -> bool:
        line = sys.stdin.readline()
        if not line:
            self.finish("stdin closed")
            return False
        remote = json.loads(line)
        if remote.get("bye"):
            self.finish("bye")
            return False
        self.agent.set_remote_credentials(self.stream, remote["ufrag"], remote["pwd"])
        candidates = []
        for text in remote["candidates"]:
            parsed = self.agent.parse_remote_candidate_sdp(self.stream, text)
            emit("remote-candidate", line=text, parsed=parsed is not None)
            if parsed is not None:
                candidates.append(parsed)
        added = self.agent.set_remote_candidates(self.stream, COMPONENT, candidates)
        emit("remote-set", added=added)
        return True

    def on_state(self, agent: Nice.Agent, stream: int, component: int, state: int) -> None:
        name = Nice.component_state_to_string(state)
        emit("component-state", state=name)
        if state == Nice.ComponentState.FAILED:
            self.finish("component failed")

    def on_selected(self, agent: Nice.Agent, stream: int, component: int, local: Nice.Candidate,
                    remote: Nice.Candidate) -> None:
        selected = {"local": describe(agent, local), "remote": describe(agent, remote)}
        self.result["selected"] = selected
        emit("selected", **selected)
        if self.hello_timer is None:
            self.hello_timer = GLib.timeout_add(100, self.send_hello)
            self.send_hello()

    def send_hello(self) -> bool:
        if self.result["received"]:
            return False
        sent = send(self.agent, self.stream, self.args.hello.encode())
        self.result["sent"] = int(self.result["sent"]) + 1  # type: ignore[call-overload]
        emit("send", bytes=sent)
        return int(self.result["sent"]) < 50  # type: ignore[call-overload]

    def on_receive(self, data: bytes) -> None:
        emit("receive", length=len(data), head=data[:48].decode(errors="replace"))
        if data.startswith(b"ECHO"):
            self.result["received"] = int(self.result["received"]) + 1  # type: ignore[call-overload]
            self.result["ok"] = self.result["selected"] is not None
        else:
            send(self.agent, self.stream, b"ECHO" + data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--compat", choices=sorted(COMPAT), default="oc2007r2")
    parser.add_argument("--local", required=True)
    parser.add_argument("--controlling", action="store_true")
    parser.add_argument("--hello", default="hello from libnice")
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("--no-relay", action="store_true", help="no TURN server, no force-relay")
    parser.add_argument("--tcp-only", action="store_true", help="ICE-TCP host candidates only")
    args = parser.parse_args(argv)
    result = Run(args).run()
    emit("result", **result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
