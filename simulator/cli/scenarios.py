"""The scenarios shipped inside the package (``simulator/scenarios/``; ``scenarios/`` in a checkout links there)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEFAULT_SCENARIO_NAME = "lync2013-scaled-edge-dns-nat.yaml"


def shipped_scenario(name: str) -> Path:
    """The path of a shipped scenario file, from a checkout or an installed wheel alike."""
    return Path(str(files("simulator") / "scenarios" / name))


def default_scenario() -> Path:
    """The seed's topology: two nodes, DNS load balancing, 1:1 NAT, every client role."""
    return shipped_scenario(DEFAULT_SCENARIO_NAME)
