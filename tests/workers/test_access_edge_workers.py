"""``edgesim serve access-edge --workers N``: N processes share the Access Edge's listeners (SO_REUSEPORT).

What is checked, and where the expected values come from:

* remote users sign in over TLS 443 (RFC 3261 §10 REGISTER with Digest, 401 then 200) and their connections are
  spread by the kernel over both workers (each worker's ``sip-443#w<i>`` accepted count > 0, summing to the
  number of users);
* a request from inside for every user — an INVITE from another remote user, routed by the Director along the
  callee's Path (RFC 3327) — reaches the callee whichever worker the Director's connection landed on: the
  callee's UA sees the caller's SDP byte for byte and the caller gets its answer in a 200 (proxies do not touch
  bodies, RFC 3261 §16.6); at least one of those requests needed the hand-over to the worker holding the flow;
* the merged metrics pass Prometheus's own linter (``promtool check metrics``); the 200s the Edge sent count
  each REGISTER once and each INVITE twice (the call crosses the Edge twice: caller's flow and callee's flow,
  each hop forwarding the 2xx once, RFC 3261 §16.7) — nothing sent between two workers is counted;
* ``--workers 0`` / ``--workers abc``: one line on stderr, exit 2.

Addresses: the scenario's lab is moved to 127.64.0.0/16 (helper aeworkers' block).
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest
import yaml

from simulator.net.clients.call import SipCall
from simulator.net.clients.sip_client import RemoteUser, SipClient
from simulator.net.transport.tls import client_context
from tests.conftest import SHIPPED
from tests.metrics.serving import Served, promtool_ok, run_serve, sample, scrape
from tests.peers import require_tool

PREFIX = "127.64"
USERS = 24
TIMEOUT = 10.0


def _scenario(tmp_path: Path) -> Path:
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    data["lab"] = {**data.get("lab", {}), "loopback_prefix": PREFIX}
    for client in data["clients"]:
        if client["name"] == "remote-users":
            client["count"] = USERS
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _sdp(who: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 192.0.2.{port % 250}\r\ns=session\r\nc=IN IP4 192.0.2.{port % 250}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=x-edgesim:{who}\r\n")


async def test_users_on_two_workers_reach_each_other_through_the_director(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    pki = tmp_path / "pki"
    with Served(["access-edge", str(_scenario(tmp_path)), "--workers", "2", "--pki-out", str(pki),
                 "--metrics", f"{PREFIX}.90.9:0"]) as served:
        url = served.wait_for(r"^metrics (http://\S+/metrics)$", timeout=60)[1]
        assert served.wait_for(r"^access-edge workers (\d+)$", timeout=60)[1] == "2"
        ready = served.wait_for(r"^access-edge ready tls=([\d.]+):(\d+) ", timeout=60)
        edge, port = ready[1], int(ready[2])
        served.wait_for(rf"^user sip:remote-users-{USERS}@", timeout=10)
        accounts = [m.groups() for line in served.lines
                    if (m := re.fullmatch(r"user sip:(remote-users-\d+)@(\S+) password (\S+) from ([\d.]+)", line))]
        assert len(accounts) == USERS
        context = client_context(pki / "ca.pem")

        clients: list[SipClient] = []
        users: list[RemoteUser] = []
        try:
            for index, (name, domain, password, host) in enumerate(accounts):
                client = await SipClient.connect([edge], port, context, "sip.contoso.com", TIMEOUT,
                                                 random.Random(index), source=host)
                clients.append(client)
                users.append(RemoteUser(client, name, domain, password))
            signed = await asyncio.gather(*(user.sign_in(TIMEOUT) for user in users))
            assert [s.challenge.status for s in signed] == [401] * USERS
            assert [s.accepted.status for s in signed] == [200] * USERS

            seen: dict[int, list[tuple[str, str]]] = {index: [] for index in range(USERS)}
            answers = {index: _sdp(f"callee-{index}", 6000 + 2 * index) for index in range(USERS)}
            for index, user in enumerate(users):
                async def on_invite(offer: str, caller: str, index: int = index) -> str:
                    seen[index].append((offer, caller))
                    return answers[index]

                user.client.on_invite = on_invite
            for callee in range(USERS):  # one INVITE from inside for every user's flow
                caller = (callee + 1) % USERS
                offer = _sdp(f"caller-{caller}", 5000 + 2 * callee)
                call = await SipCall.invite(users[caller].client, users[callee].aor, offer, TIMEOUT,
                                            caller_uri=users[caller].aor)
                assert call.status == 200 and call.answer_sdp == answers[callee]
                assert seen[callee] == [(offer, users[caller].aor)]  # the body crossed every hop untouched
                ack = await users[callee].client.next_request("ACK", TIMEOUT)  # the ACK reached the callee
                assert ack.call_id == call.call_id

            exposition = await asyncio.to_thread(scrape, url)
            promtool_ok(promtool, exposition)
            node = {"node": "edge1"}
            per_worker = [sample(exposition, "edgesim_tls_handshakes_total", listener=f"sip-443#w{i}",
                                 result="accepted", **node) for i in range(2)]
            assert all(count > 0 for count in per_worker) and sum(per_worker) == USERS, per_worker
            flows = [sample(exposition, "edgesim_sip_worker_flows", worker=f"w{i}", **node) for i in range(2)]
            assert flows == per_worker
            out = sum(sample(exposition, "edgesim_sip_worker_handovers_total", worker=f"w{i}", direction="out",
                             **node) for i in range(2))
            handed_in = sum(sample(exposition, "edgesim_sip_worker_handovers_total", worker=f"w{i}",
                                   direction="in", **node) for i in range(2))
            assert out >= 1 and handed_in == out, (out, handed_in)
            assert sample(exposition, "edgesim_sip_responses_total", code="200", **node) == USERS + 2 * USERS
            assert sample(exposition, "edgesim_sip_responses_total", code="401", **node) == USERS
        finally:
            for client in clients:
                await client.close()
        code, stderr = served.stop()
    assert code == 0, stderr
    line = next(line for line in served.lines if line.startswith("access-edge workers w0("))
    print(line)  # the per-worker figures, for the report (pytest -s)
    counts = [int(n) for n in re.findall(r"tls443=(\d+)", line)]
    assert len(counts) == 2 and sum(counts) == USERS and min(counts) > 0, line


@pytest.mark.parametrize("value", ["0", "abc"])
def test_bad_worker_count_is_one_line_and_exit_2(value: str) -> None:
    done = run_serve(["access-edge", "--workers", value, "--duration", "0.1"])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "worker" in lines[0] and "Traceback" not in done.stderr, done.stderr
