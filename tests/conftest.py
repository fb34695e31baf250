from __future__ import annotations

from pathlib import Path

import pytest

from simulator.scenario.loader import load_scenario
from simulator.scenario.schema import Scenario

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"


@pytest.fixture(scope="session")
def shipped_scenario() -> Scenario:
    return load_scenario(SHIPPED)
