from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from simulator.lab.pki import LabPki, build_pki
from simulator.lab.topology import Lab
from simulator.spec.schema import Scenario


@pytest.fixture(scope="session")
def shipped_pki(shipped_scenario: Scenario) -> LabPki:
    """One PKI for every lab of these tests (a variant only changes which file a peer loads)."""
    return build_pki(shipped_scenario)


@pytest.fixture
async def lab(shipped_scenario: Scenario, shipped_pki: LabPki) -> AsyncIterator[Lab]:
    async with Lab(shipped_scenario, pki=shipped_pki) as running:
        yield running
