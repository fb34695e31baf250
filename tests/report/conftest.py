"""One real ``edgesim run`` of the shipped scenario per test session for the output tests (it takes ~6 s)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.report.helpers import edgesim, scenario_text


@dataclass(frozen=True)
class Run:
    result: subprocess.CompletedProcess[str]
    folder: Path
    junit: Path
    scenario: Path


@pytest.fixture(scope="session")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`COLUMNS=80 edgesim run shipped --out DIR --junit FILE` (probes and the 2 s sign-in load phase)."""
    base = tmp_path_factory.mktemp("full-run")
    scenario = base / "shipped.yaml"
    scenario.write_text(scenario_text(), encoding="utf-8")
    folder, junit = base / "run", base / "junit.xml"
    result = edgesim("run", str(scenario), "--out", str(folder), "--junit", str(junit), "--no-progress",
                     "--loop", "asyncio", columns=80)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Run(result, folder, junit, scenario)
