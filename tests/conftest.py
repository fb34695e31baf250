from __future__ import annotations

import os
from pathlib import Path

import pytest

from simulator.spec.loader import load_scenario
from simulator.spec.schema import Scenario

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "scenarios" / "lync2013-scaled-edge-dns-nat.yaml"


def loopback_prefix_for_tests() -> str:
    """Each pytest process gets its own /16 of 127/8, so parallel runs (or a `make run`) never collide."""
    return f"127.{100 + os.getpid() % 100}"


def shipped_text_for_tests() -> str:
    """The shipped scenario file's text, placed in this process's loopback /16."""
    text = SHIPPED.read_text(encoding="utf-8")
    lab = f"lab: {{loopback_prefix: '{loopback_prefix_for_tests()}'}}\n"
    return text.replace("seed: 2013\n", f"seed: 2013\n{lab}", 1)


@pytest.fixture(scope="session")
def shipped_as_written() -> Scenario:
    return load_scenario(SHIPPED)


@pytest.fixture(scope="session")
def shipped_scenario(shipped_as_written: Scenario) -> Scenario:
    """The shipped scenario in this test process's own loopback /16."""
    lab = shipped_as_written.lab.model_copy(update={"loopback_prefix": loopback_prefix_for_tests()})
    return shipped_as_written.model_copy(update={"lab": lab})
