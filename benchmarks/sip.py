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
Beside them, ``*_ratio_same_scenario``: the same SIPp scenario against a SIPp UAS that plays the Edge and the
Director (``benchmarks/sipp/*_uas.xml``, nothing verified) — SIPp's own rate for that exchange, no Edge.
Usage: ``python benchmarks/sip.py [--calls N] [--seconds S] [--runs R] [--one-process] [--profile FILE]``.

By default (``--split``) the Access Edge is the only thing this process runs: the Director (Front End
emulation) runs in a child process of its own (``--role director``), and so does the edgesim load client
(``--role client``), all three sharing one PKI written to a temporary folder, so what is measured is the
Edge's cost, not the Director's Digest or the client's. ``--one-process`` is the old layout (one loop for
Edge, Director and edgesim client). ``--runs R`` repeats the three SIPp runs (direct, REGISTER, MESSAGE,
interleaved) R times and reports medians, with CPU µs per transaction (utime + stime from /proc) of the Edge
(this process), the Director and the direct run's SIPp UAS — ``*_cpu_us*``, the steadier figures on a shared
machine — and ``*_cpu_ratio`` = UAS µs ÷ Edge µs (per core, load aside); ``--profile FILE`` writes a cProfile of this
(the Edge's) process over the SIPp-through-the-Edge runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.lab.access import access_edge_address, remote_user_session, user_accounts
from simulator.lab.pki import build_pki, read_pki
from simulator.lab.topology import Lab, Placement
from simulator.spec.loader import load_scenario
from simulator.wire import sip
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
CPU_KEYS = ("edge_cpu_us_register", "edge_cpu_us_message", "director_cpu_us_register", "director_cpu_us_message")
LOOP = ["asyncio"]  # the event loop every process of one invocation runs (--loop)
THIS = str(Path(__file__).resolve())
BENCH_SIPP = Path(__file__).resolve().parent / "sipp"  # the direct counterparts of the through-Edge scenarios


def _rate(run: SippRun, transactions_per_call: int) -> float:
    if run.returncode != 0 or run.failed != 0:
        raise SystemExit(f"SIPp run failed ({run.returncode}, {run.failed} failed):\n{run.output[-3000:]}")
    return run.successful * transactions_per_call / run.elapsed


async def sipp_direct(calls: int, folder: Path, scenario: str = "invite") -> tuple[float, float]:
    """(transactions/s, the SIPp UAS's CPU µs per transaction: the server side's cost, as ``edge_cpu_us_*``).

    ``scenario`` "invite": SIPp's built-in uac → uas (INVITE+BYE, the figure the ratios are taken against);
    "register" / "message": the through-Edge scenario against a SIPp UAS playing the Edge and the Director
    (``benchmarks/sipp/*_uas.xml``), SIPp's own pacing of the same exchange, reported beside the ratios.
    """
    port = free_port(DIRECT_UAS)
    if scenario == "invite":
        uas_args, uac_args, per_call = ["-sn", "uas"], ["-sn", "uac"], 2
    else:
        user, domain = "bench", "contoso.com"
        (folder / "direct-users.csv").write_text(f"SEQUENTIAL\n{domain};peer\n")
        uas_args = ["-sf", str(BENCH_SIPP / f"{scenario}_uas.xml")]
        uac_args = ["-sf", str(SIPP_DIR / f"{scenario}.xml"), "-inf", "direct-users.csv", "-s", user, "-au", user,
                    "-ap", "secret", "-nd"]
        per_call = 2 if scenario == "register" else 1
    uas = await asyncio.create_subprocess_exec(SIPP, *uas_args, "-t", "t1", "-i", DIRECT_UAS, "-p", str(port),
                                               "-nostdin", stdout=asyncio.subprocess.DEVNULL,
                                               stderr=asyncio.subprocess.DEVNULL, cwd=folder)
    try:
        await asyncio.sleep(0.3)
        cpu = _cpu_seconds(uas.pid)
        run = await run_sipp(SIPP, [f"{DIRECT_UAS}:{port}", *uac_args, "-t", "t1", "-i", DIRECT_UAC,
                                    "-p", str(free_port(DIRECT_UAC)),
                                    "-m", str(calls // 2 if scenario == "register" else calls), "-r", "100000",
                                    "-l", str(LIMIT), "-timeout", "60"], timeout=90, cwd=folder)
        cpu = _cpu_seconds(uas.pid) - cpu
    finally:
        if uas.returncode is None:
            uas.terminate()
        if await uas.wait() not in (0, -15):
            raise SystemExit(f"the SIPp UAS ({' '.join(uas_args)}) exited with {uas.returncode}")
    return _rate(run, per_call), cpu * 1e6 / max(1, per_call * run.successful)


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of process ``pid`` from /proc, this process's when ``None``."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sipp_through_edge(lab: Lab, folder: Path, calls: int,
                            director: int | None = None) -> tuple[float, float, list[float]]:
    """(REGISTER tps, MESSAGE tps, [CPU µs per REGISTER, per MESSAGE transaction] of this process (the Edge),
    then of the ``director`` process if given).
    """
    pids: list[int | None] = [None] if director is None else [None, director]
    assert lab.files is not None
    user, target = user_accounts(lab)[0], user_accounts(lab)[1]
    (folder / "users.csv").write_text(f"SEQUENTIAL\n{user.domain};{target.user}\n")
    edge = (access_edge_address(lab, "edge1"), lab.port_map(443))
    common = ["-inf", "users.csv", "-s", user.user, "-au", user.user, "-ap", user.password, "-t", "t1",
              "-i", SIPP_HOST, "-r", "100000", "-l", str(LIMIT), "-nd", "-timeout", "60"]
    async with stunnel_client(STUNNEL, folder, lab.files.ca, edge, "sip.contoso.com") as (host, port):
        cpu = [_cpu_seconds(pid) for pid in pids]
        register = await run_sipp(SIPP, [f"{host}:{port}", "-sf", str(SIPP_DIR / "register.xml"), "-m",
                                         str(calls // 2), "-p", str(free_port(SIPP_HOST)), *common],
                                  timeout=90, cwd=folder)
        middle = [_cpu_seconds(pid) for pid in pids]
        message = await run_sipp(SIPP, [f"{host}:{port}", "-sf", str(SIPP_DIR / "message.xml"), "-m", str(calls),
                                        "-p", str(free_port(SIPP_HOST)), *common], timeout=90, cwd=folder)
        end = [_cpu_seconds(pid) for pid in pids]
    cpu_us: list[float] = []
    for index in range(len(pids)):
        cpu_us.append((middle[index] - cpu[index]) * 1e6 / max(1, 2 * register.successful))
        cpu_us.append((end[index] - middle[index]) * 1e6 / max(1, message.successful))
    return _rate(register, 2), _rate(message, 1), cpu_us


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


def _placement(role: str) -> Placement:
    if role == "director":  # the Front End/Director emulation only
        return Placement(nodes=frozenset(), internal=True, external=False, client_nats=False)
    if role == "client":  # the client populations' NATs only: the edgesim client sends through them
        return Placement(nodes=frozenset(), internal=False, external=False, client_nats=True)
    return Placement(internal=False, client_nats=False)  # "edge": the pool nodes, DNS, CRL and partners


async def _child(role: str, pki_folder: str, seconds: float) -> None:
    """``--role director|client``: one part of the lab in this process, on the parent's PKI."""
    scenario = load_scenario(SCENARIO)
    pki, files = read_pki(scenario, pki_folder)
    async with Lab(scenario, pki, placement=_placement(role), pki_files=files) as lab:
        if role == "client":
            register, message = await edgesim_client(lab, seconds)
            print(json.dumps({"register": register, "message": message}), flush=True)
            return
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin


async def _spawn(role: str, pki_folder: Path, seconds: float = 0.0) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, THIS, "--role", role, "--pki", str(pki_folder),
        "--seconds", str(seconds), "--loop", LOOP[0], stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)


async def _split_client(pki_folder: Path, seconds: float) -> tuple[float, float]:
    process = await _spawn("client", pki_folder, seconds)
    out, _ = await asyncio.wait_for(process.communicate(), 60 + 4 * seconds)
    if process.returncode != 0:
        raise SystemExit(f"edgesim client process failed ({process.returncode})")
    result = json.loads(out.decode().strip().splitlines()[-1])
    return float(result["register"]), float(result["message"])


def _median(values: list[float]) -> float:
    return statistics.median(values)


async def main(calls: int, seconds: float, runs: int, split: bool, profile: str | None) -> dict[str, object]:
    scenario = load_scenario(SCENARIO)
    profiler = cProfile.Profile() if profile else None
    per_run: dict[str, list[float]] = {"direct_tps": [], "sipp_register_tps": [], "sipp_message_tps": [],
                                       "edgesim_register_tps": [], "edgesim_message_tps": []}
    with tempfile.TemporaryDirectory(prefix="edgesim-sip-bench-") as name:
        folder = Path(name)
        director: asyncio.subprocess.Process | None = None
        if split:
            pki = build_pki(scenario)
            files = pki.write(folder / "pki")
            lab = Lab(scenario, pki, placement=_placement("edge"), pki_files=files)
        else:
            lab = Lab(scenario)
        async with lab:
            try:
                if split:
                    director = await _spawn("director", folder / "pki")
                    assert director.stdout is not None
                    line = await asyncio.wait_for(director.stdout.readline(), 60)
                    if line.strip() != b"ready":
                        raise SystemExit("the Director process did not start")
                for _ in range(runs):
                    direct, uas_cpu = await sipp_direct(calls, folder)
                    per_run["direct_tps"].append(direct)
                    per_run.setdefault("sipp_uas_cpu_us", []).append(uas_cpu)
                    for kind in ("register", "message"):
                        per_run.setdefault(f"direct_{kind}_tps", []).append((await sipp_direct(calls, folder, kind))[0])
                    if profiler is not None:
                        profiler.enable()
                    register, message, cpu_us = await sipp_through_edge(
                        lab, folder, calls, director.pid if director is not None else None)
                    if profiler is not None:
                        profiler.disable()
                    per_run["sipp_register_tps"].append(register)
                    per_run["sipp_message_tps"].append(message)
                    for key, value in zip(CPU_KEYS, cpu_us, strict=False):
                        per_run.setdefault(key, []).append(value)
                    if seconds > 0:
                        own = await (_split_client(folder / "pki", seconds) if split
                                     else edgesim_client(lab, seconds))
                        per_run["edgesim_register_tps"].append(own[0])
                        per_run["edgesim_message_tps"].append(own[1])
            finally:
                if director is not None:
                    assert director.stdin is not None
                    director.stdin.close()
                    try:
                        await asyncio.wait_for(director.wait(), 10)
                    except TimeoutError:
                        director.kill()
                        await director.wait()
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)
    results: dict[str, object] = {key: _median(values) for key, values in per_run.items() if values}
    results["runs"] = {key: [round(v, 1) for v in values] for key, values in per_run.items() if values}
    results["register_ratios"] = [round(r / d, 4) for r, d in zip(per_run["sipp_register_tps"],
                                                                   per_run["direct_tps"], strict=True)]
    results["message_ratios"] = [round(m / d, 4) for m, d in zip(per_run["sipp_message_tps"],
                                                                  per_run["direct_tps"], strict=True)]
    results["register_ratios_same"] = [round(r / d, 4) for r, d in zip(per_run["sipp_register_tps"],
                                                                        per_run["direct_register_tps"], strict=True)]
    results["message_ratios_same"] = [round(m / d, 4) for m, d in zip(per_run["sipp_message_tps"],
                                                                       per_run["direct_message_tps"], strict=True)]
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000, help="SIPp calls per run (register runs half)")
    parser.add_argument("--seconds", type=float, default=3.0, help="edgesim client duration per measure (0: skip)")
    parser.add_argument("--runs", type=int, default=3, help="runs (medians are reported)")
    parser.add_argument("--one-process", dest="split", action="store_false",
                        help="Edge, Director and edgesim client on one loop (the old layout)")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the Edge process over the SIPp→Edge runs")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop of the Edge, Director and client processes (edgesim run's default: uvloop; "
                             "serve access-edge and the tests: asyncio)")
    parser.add_argument("--role", choices=("director", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    args = parser.parse_args()
    random.seed(SEED)
    LOOP[0] = args.loop
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.role is not None:
        asyncio.run(_child(args.role, args.pki, args.seconds))
        sys.exit(0)
    print(f"seed {SEED}; {platform.node()} {platform.machine()} {os.cpu_count()} CPU, Python "
          f"{platform.python_version()}; SIPp -l {LIMIT}, edgesim client concurrency {CONCURRENCY}; "
          f"{'Edge, Director and client in their own processes' if args.split else 'one process'}; "
          f"{args.runs} runs, medians; {args.loop} loop; SIP codec "
          f"{'compiled (mypyc)' if sip.COMPILED else 'pure Python'}")
    results = asyncio.run(main(args.calls, args.seconds, args.runs, args.split, args.profile))
    direct = float(str(results["direct_tps"]))
    print(f"SIPp uac→uas direct (TCP, INVITE+BYE)        {direct:10.0f} transactions/s")
    for key, label in (("sipp_register_tps", "SIPp → stunnel → Access Edge, REGISTER"),
                       ("sipp_message_tps", "SIPp → stunnel → Access Edge, MESSAGE"),
                       ("edgesim_register_tps", "edgesim client → Access Edge, REGISTER"),
                       ("edgesim_message_tps", "edgesim client → Access Edge, MESSAGE")):
        if key in results:
            value = float(str(results[key]))
            print(f"{label:45s} {value:10.0f} transactions/s  ({value / direct:.3f} × direct)")
    register_ratios = results.pop("register_ratios")
    message_ratios = results.pop("message_ratios")
    register_same = results.pop("register_ratios_same")
    message_same = results.pop("message_ratios_same")
    assert isinstance(register_ratios, list) and isinstance(message_ratios, list)
    assert isinstance(register_same, list) and isinstance(message_same, list)
    for key, label in (("direct_register_tps", "SIPp register.xml → SIPp UAS direct (TCP)"),
                       ("direct_message_tps", "SIPp message.xml → SIPp UAS direct (TCP)")):
        print(f"{label:45s} {float(str(results[key])):10.0f} transactions/s  (the same exchange, no Edge)")
    summary = {
        "register_ratio": round(_median(register_ratios), 4),
        "message_ratio": round(_median(message_ratios), 4),
        "register_ratios": register_ratios, "message_ratios": message_ratios,
        # against SIPp playing the Edge and the Director in the same scenario (SIPp's pacing of that exchange)
        "register_ratio_same_scenario": round(_median(register_same), 4),
        "message_ratio_same_scenario": round(_median(message_same), 4),
        # per CPU: the SIPp UAS's µs per transaction ÷ the Edge's (what one core of each would do, load aside)
        **({"register_cpu_ratio": round(float(str(results["sipp_uas_cpu_us"]))
                                        / float(str(results["edge_cpu_us_register"])), 4),
            "message_cpu_ratio": round(float(str(results["sipp_uas_cpu_us"]))
                                       / float(str(results["edge_cpu_us_message"])), 4)}
           if "edge_cpu_us_message" in results else {}),
        **{key: (round(float(str(value)), 1) if not isinstance(value, dict) else value)
           for key, value in results.items()},
        "split": args.split, "loop": args.loop, "seed": SEED, "sip_codec_compiled": sip.COMPILED,
    }
    print(json.dumps(summary))
