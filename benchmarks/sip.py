"""SIP transactions/s through the Access Edge (persistent TLS 443), beside SIPp uac→uas direct over TCP.

Measured in one run on this machine:

* **SIPp direct** — SIPp's built-in ``-sn uas`` and ``-sn uac`` over one TCP connection (INVITE/180/200/
  ACK/BYE: two transactions per call, INVITE and BYE), the peer's own ceiling;
* **SIPp → stunnel → Access Edge → Director** — ``tests/access/sipp/register.xml`` (2 REGISTER
  transactions per call: 401 then 200) and ``message.xml`` (1 MESSAGE transaction per call);
* **edgesim client → Access Edge → Director** — :class:`~simulator.net.clients.sip_client.RemoteUser` sign-ins and
  MESSAGEs on one persistent TLS connection, ``CONCURRENCY`` in flight.

Every run is bounded (``-m`` calls or a duration, plus timeouts). The last line is one JSON object with
``register_ratio`` and ``message_ratio`` = (SIPp through the Access Edge) ÷ (SIPp direct), transactions/s.
Usage: ``python benchmarks/sip.py [--calls N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.lab.access import access_edge_address, remote_user_session, user_accounts
from simulator.lab.topology import Lab
from simulator.spec.loader import load_scenario
from tests.access.sipp_harness import (
    SIPP_DIR,
    SIPP_HOST,
    SippRun,
    free_port,
    run_sipp,
    stunnel_client,
)

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"
SIPP, STUNNEL = "/usr/bin/sipp", "/usr/bin/stunnel4"
DIRECT_UAS, DIRECT_UAC = "127.88.1.1", "127.88.1.2"
LIMIT = 64  # calls in flight (SIPp -l) — closed loop at the ceiling
CONCURRENCY = 64  # edgesim client requests in flight
SEED = 2013


def _rate(run: SippRun, transactions_per_call: int) -> float:
    if run.returncode != 0 or run.failed != 0:
        raise SystemExit(f"SIPp run failed ({run.returncode}, {run.failed} failed):\n{run.output[-3000:]}")
    return run.successful * transactions_per_call / run.elapsed


async def sipp_direct(calls: int, folder: Path) -> float:
    port = free_port(DIRECT_UAS)
    uas = await asyncio.create_subprocess_exec(SIPP, "-sn", "uas", "-t", "t1", "-i", DIRECT_UAS, "-p", str(port),
                                               "-nostdin", stdout=asyncio.subprocess.DEVNULL,
                                               stderr=asyncio.subprocess.DEVNULL, cwd=folder)
    try:
        await asyncio.sleep(0.3)
        run = await run_sipp(SIPP, [f"{DIRECT_UAS}:{port}", "-sn", "uac", "-t", "t1", "-i", DIRECT_UAC,
                                    "-p", str(free_port(DIRECT_UAC)), "-m", str(calls), "-r", "100000",
                                    "-l", str(LIMIT), "-timeout", "60"], timeout=90, cwd=folder)
    finally:
        uas.terminate()
        await uas.wait()
    return _rate(run, 2)


async def sipp_through_edge(lab: Lab, folder: Path, calls: int) -> tuple[float, float]:
    assert lab.files is not None
    user, target = user_accounts(lab)[0], user_accounts(lab)[1]
    (folder / "users.csv").write_text(f"SEQUENTIAL\n{user.domain};{target.user}\n")
    edge = (access_edge_address(lab, "edge1"), lab.port_map(443))
    common = ["-inf", "users.csv", "-s", user.user, "-au", user.user, "-ap", user.password, "-t", "t1",
              "-i", SIPP_HOST, "-r", "100000", "-l", str(LIMIT), "-nd", "-timeout", "60"]
    async with stunnel_client(STUNNEL, folder, lab.files.ca, edge, "sip.contoso.com") as (host, port):
        register = await run_sipp(SIPP, [f"{host}:{port}", "-sf", str(SIPP_DIR / "register.xml"), "-m",
                                         str(calls // 2), "-p", str(free_port(SIPP_HOST)), *common],
                                  timeout=90, cwd=folder)
        message = await run_sipp(SIPP, [f"{host}:{port}", "-sf", str(SIPP_DIR / "message.xml"), "-m", str(calls),
                                        "-p", str(free_port(SIPP_HOST)), *common], timeout=90, cwd=folder)
    return _rate(register, 2), _rate(message, 1)


async def edgesim_client(lab: Lab, seconds: float) -> tuple[float, float]:
    accounts = user_accounts(lab)
    async with remote_user_session(lab, "edge1", seed=SEED) as user:
        from simulator.net.clients.sip_client import RemoteUser

        peers = [RemoteUser(user.client, user.user, user.domain, user.password) for _ in range(CONCURRENCY)]

        async def loop_register(worker: RemoteUser, until: float, counter: list[int]) -> None:
            while time.perf_counter() < until:
                await worker.sign_in(10)
                counter[0] += 2

        async def loop_message(until: float, counter: list[int]) -> None:
            while time.perf_counter() < until:
                request = user.client.build("MESSAGE", accounts[1].aor, user.from_, f"<{accounts[1].aor}>",
                                            headers=[("Content-Type", "text/plain")], body=b"bench")
                response = await user.client.request(request, 10)
                assert response.status == 200, response.status
                counter[0] += 1

        counts = [0]
        started = time.perf_counter()
        await asyncio.gather(*(loop_register(p, started + seconds, counts) for p in peers))
        register_rate = counts[0] / (time.perf_counter() - started)
        counts = [0]
        started = time.perf_counter()
        await asyncio.gather(*(loop_message(started + seconds, counts) for _ in range(CONCURRENCY)))
        message_rate = counts[0] / (time.perf_counter() - started)
    return register_rate, message_rate


async def main(calls: int, seconds: float) -> dict[str, object]:
    scenario = load_scenario(SCENARIO)
    with tempfile.TemporaryDirectory(prefix="edgesim-sip-bench-") as name:
        folder = Path(name)
        direct = await sipp_direct(calls, folder)
        async with Lab(scenario) as lab:
            sipp_register, sipp_message = await sipp_through_edge(lab, folder, calls)
            own_register, own_message = await edgesim_client(lab, seconds)
    return {"direct_tps": direct, "sipp_register_tps": sipp_register, "sipp_message_tps": sipp_message,
            "edgesim_register_tps": own_register, "edgesim_message_tps": own_message}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000, help="SIPp calls per run (register runs half)")
    parser.add_argument("--seconds", type=float, default=3.0, help="edgesim client duration per measure")
    args = parser.parse_args()
    random.seed(SEED)
    print(f"seed {SEED}; {platform.node()} {platform.machine()} {os.cpu_count()} CPU, Python "
          f"{platform.python_version()}; SIPp -l {LIMIT}, edgesim client concurrency {CONCURRENCY}")
    results = asyncio.run(main(args.calls, args.seconds))
    direct = float(str(results["direct_tps"]))
    print(f"SIPp uac→uas direct (TCP, INVITE+BYE)        {direct:10.0f} transactions/s")
    for key, label in (("sipp_register_tps", "SIPp → stunnel → Access Edge, REGISTER"),
                       ("sipp_message_tps", "SIPp → stunnel → Access Edge, MESSAGE"),
                       ("edgesim_register_tps", "edgesim client → Access Edge, REGISTER"),
                       ("edgesim_message_tps", "edgesim client → Access Edge, MESSAGE")):
        value = float(str(results[key]))
        print(f"{label:45s} {value:10.0f} transactions/s  ({value / direct:.3f} × direct)")
    summary = {
        "register_ratio": round(float(str(results["sipp_register_tps"])) / direct, 4),
        "message_ratio": round(float(str(results["sipp_message_tps"])) / direct, 4),
        **{key: round(float(str(value)), 1) for key, value in results.items()},
        "seed": SEED,
    }
    print(json.dumps(summary))
