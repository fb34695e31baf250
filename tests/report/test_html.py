"""report.html in a real browser (headless Chromium over the DevTools protocol): it loads with no console error and
no request beyond its own file, and every plot area has drawn data (coloured pixels, not a blank box).

The checker's own sensitivity is tested too: a page with an image on the network and a console.error must show
both, or a clean result would prove nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from tests.report.chromium import Chromium
from tests.report.conftest import Run
from tests.report.helpers import edgesim

PLOTS = ("plot-load", "plot-latency", "plot-relay", "plot-spread")
RECTS = ("JSON.stringify(Object.fromEntries([...document.querySelectorAll('.plot svg')].map(e => {"
         "const r = e.getBoundingClientRect(); return [e.parentElement.id, "
         "{x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height}]})))")


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    chromium = Chromium()
    try:
        yield chromium
    finally:
        chromium.close()


def _coloured_pixels(png: bytes) -> int:
    """Pixels with a clear hue (bars, lines): the axes and text are grey or black, the background white."""
    image = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    spread = image.max(axis=2) - image.min(axis=2)
    return int(np.count_nonzero(spread > 0.2))


def test_the_checker_sees_requests_and_console_errors(browser: Chromium, tmp_path: Path) -> None:
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png">'
                    '<script>console.error("boom")</script></body></html>')
    visit = browser.visit(page.as_uri())
    assert "http://example.invalid/x.png" in visit.requests
    assert any("boom" in line for line in visit.console), visit.console


def test_report_html_loads_offline_without_errors_and_draws_every_plot(browser: Chromium, full_run: Run) -> None:
    page = full_run.folder / "report.html"
    visit = browser.visit(page.as_uri(), RECTS)
    assert visit.console == [], visit.console
    assert visit.requests == [page.as_uri()], visit.requests  # nothing but the page itself
    rects = json.loads(visit.evaluated)
    assert sorted(rects) == sorted(PLOTS)
    for plot in PLOTS:
        rect = rects[plot]
        assert rect["width"] > 200 and rect["height"] > 150, (plot, rect)
        coloured = _coloured_pixels(browser.screenshot(rect))
        assert coloured > 500, (plot, coloured)  # data drawn, not an empty frame
    blank = {"x": 0, "y": 0, "width": 300, "height": 20}  # the page's top margin: the measure reads 0 there
    assert _coloured_pixels(browser.screenshot(blank)) == 0


def test_a_saved_report_renders_again(browser: Chromium, full_run: Run, tmp_path: Path) -> None:
    out = tmp_path / "again.html"
    result = edgesim("report", str(full_run.folder / "report.json"), "--html", str(out), columns=80)
    assert result.returncode == 0, result.stderr
    visit = browser.visit(out.as_uri(), RECTS)
    assert visit.console == [] and visit.requests == [out.as_uri()]
    assert sorted(json.loads(visit.evaluated)) == sorted(PLOTS)
    html = out.read_text()
    assert html.count("<tr class=") == 38 and "<script" not in html and "http://" not in html.split("<svg")[0]
