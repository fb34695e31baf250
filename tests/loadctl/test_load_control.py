"""Issue 12: SIPp-style load control of `edgesim run`'s sign-in phases, live lines, k6-style thresholds.

Expected figures come from the load-control semantics themselves (SIPp -r/-rate_increase/-rate_interval/-rate_max:
a ramp of 5/s, +5/s every second, capped at 20/s gives 5, 10, 15, 20 starts in seconds 0..3; Little's law for a
closed concurrency limit), never from the code under test. Tolerance on an achieved rate: max(2, 20 %) of target.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.scenario.load import LoadMeter, pace
from simulator.spec.schema import LoadPhase
from tests.conftest import ROOT
from tests.report.helpers import scenario_text

RAMP = ("--rate", "5", "--rate-increase", "5", "--rate-interval", "1", "--rate-max", "20", "--duration", "4")
QUICK = ("--rules", "E1", "--loop", "asyncio")
LIVE = re.compile(r"^t=(\d+\.\d)s rate=([\d.]+)/s target=([\d.]+)/s in_flight=\d+ ok=\d+ failed=\d+ "
                  r"failures=\S+ p50_ms=\S+ p99_ms=\S+$")


def close_to(achieved: float, target: float) -> bool:
    return abs(achieved - target) <= max(2.0, 0.2 * target)


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    text = scenario_text("127.86")  # the sign-in phase alone: the ramp drives it; calls have their own tests
    text = text.replace("    role: remote-user\n    count: 4\n", "    role: remote-user\n    count: 60\n", 1)
    path = tmp_path / "ramp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def edgesim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simulator.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=90, check=False)


@pytest.mark.timeout(90)
def test_a_ramp_is_followed_in_the_live_lines_and_the_report(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = edgesim("run", str(scenario), *QUICK, *RAMP, "--out", str(out),
                     "--threshold", "sign_in_ok_ratio>0.9", "--threshold", "sign_in_ms:p99<10000")
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    live = [LIVE.match(line) for line in result.stderr.splitlines() if line.startswith("t=")]
    assert len(live) >= 4 and all(live), result.stderr  # piped: plain key=value lines, one a second
    for second, wanted in enumerate((5, 10, 15, 20), start=1):  # the line at t=N shows second N-1
        line = next(m for m in live if m is not None and float(m.group(1)) == second)
        assert float(line.group(3)) == wanted and close_to(float(line.group(2)), wanted), line.group(0)
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = doc["load"]["control"]["per_second"]
    assert [row["target"] for row in rows[:4]] == [5, 10, 15, 20]
    assert all(close_to(row["started"], row["target"]) for row in rows[:4]), rows
    assert doc["load"]["control"]["started"] == sum(row["started"] for row in rows)
    assert [check["ok"] for check in doc["thresholds"]] == [True, True]


@pytest.mark.timeout(60)
def test_a_failing_threshold_makes_the_exit_code_1(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = edgesim("run", str(scenario), *QUICK, "--rate", "10", "--duration", "1", "--no-progress",
                     "--out", str(out), "--threshold", "sign_in_ms:p50<0.001", "--threshold", "fail_timeout==0")
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr[-2000:])
    assert not [line for line in result.stderr.splitlines() if line.startswith("t=")]  # --no-progress: no lines
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [(c["threshold"], c["ok"]) for c in doc["thresholds"]] == [("sign_in_ms:p50<0.001", False),
                                                                      ("fail_timeout==0", True)]


@pytest.mark.parametrize(("args", "needle"), [
    (("--rate", "-5"), "--rate must be above 0"),
    (("--rate", "10", "--rate-max", "5"), "--rate-max (5) is below --rate (10)"),
    (("--rate-increase", "5", "--rate-max", "5"), "rate_max (5) is below rate (10)"),  # the phase's own rate: 10
    (("--concurrency", "0"), "--concurrency must be above 0"),
    (("--threshold", "sign_in_ms<5"), "needs an aggregate"),
    (("--threshold", "nonsense>1"), "unknown metric"),
])
def test_bad_load_values_exit_2_with_one_line(scenario: Path, args: tuple[str, ...], needle: str) -> None:
    result = edgesim("run", str(scenario), *QUICK, *args)
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr and needle in lines[0], result.stderr


async def test_a_concurrency_limit_bounds_in_flight_and_gives_littles_law_throughput() -> None:
    # 2 in flight, each answered after 0.1 s: at most 2/0.1 = 20 starts a second whatever the 100/s rate asked.
    phase = LoadPhase(name="p", clients="c", rate=100, duration=1.0, concurrency=2)
    loop = asyncio.get_running_loop()
    meter = LoadMeter([phase], loop.time())
    peak = 0
    pending: list[asyncio.Task[None]] = []

    async def session(began: float) -> None:  # meter.began was called when it was started, as _MeteredSession does
        await asyncio.sleep(0.1)
        meter.answer(loop.time(), began, None, "p")

    def start_one(index: int) -> None:
        nonlocal peak
        meter.began(loop.time(), "p")
        pending.append(asyncio.create_task(session(loop.time())))
        peak = max(peak, meter.in_flight)

    await pace(phase, 1000, meter, meter.start + 1.0, start_one)
    await asyncio.gather(*pending)
    assert peak <= 2
    assert close_to(len(pending), 20), len(pending)


async def test_closed_loop_starts_one_when_one_is_answered() -> None:
    phase = LoadPhase(name="p", clients="c", rate=1, duration=0.5, closed_loop=True, concurrency=3)
    loop = asyncio.get_running_loop()
    meter = LoadMeter([phase], loop.time())
    pending: list[asyncio.Task[None]] = []

    async def session(began: float) -> None:  # meter.began was called when it was started, as _MeteredSession does
        await asyncio.sleep(0.05)
        meter.answer(loop.time(), began, None, "p")

    def start_one(index: int) -> None:
        meter.began(loop.time(), "p")
        pending.append(asyncio.create_task(session(loop.time())))

    await pace(phase, 1000, meter, meter.start + 0.5, start_one)
    await asyncio.gather(*pending)
    assert close_to(len(pending), 3 * 0.5 / 0.05)  # the rate (1/s) is ignored in closed loop
    assert meter.target(0.2) is None
