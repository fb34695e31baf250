"""`edgesim rules` stays readable in a narrow terminal (the run's table is checked in tests/report)."""

from __future__ import annotations

import pytest

from tests.report.helpers import edgesim


@pytest.mark.parametrize("columns", [80, 120])
def test_the_rule_list_fits_the_terminal(columns: int) -> None:
    result = edgesim("rules", columns=columns)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= columns
    assert "…" not in result.stdout  # folded at words, never cut
    ids = [line.split()[0] for line in lines if line.split() and line.split()[0][:1] in "EIFPX"
           and line.split()[0][1:].isdigit()]
    assert len(ids) == 38
