"""Compare and sweep views in Chromium: an experiment's runs in parallel coordinates and a
param-vs-metric scatter whose brushes narrow the list (and open the runs list with the same
filters), compare of more than 20 runs with mean ± std bands over the compared runs grouped
by a param, and images of several runs side by side at a chosen step."""

from __future__ import annotations

import re
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from runstream import Experiment
from runstream.config import Settings
from tests.conftest import Stack
from tests.test_browser import Console

pytestmark = [pytest.mark.one_engine, pytest.mark.browser]

N_RUNS = 24


def _png(path: Path, shade: int) -> Path:
    w, h = 24, 16
    raw = b"".join(b"\x00" + bytes((shade, 255 - shade, 120)) * w for _ in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def _alpha(i: int) -> float:
    return round(0.05 * (i + 1), 2)


def _mse(alpha: float) -> float:
    return 3000 + 4000 * (alpha - 0.6) ** 2


def _drag(page: Any, x0: float, y0: float, x1: float, y1: float) -> None:
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=3)
    page.mouse.move(x1, y1, steps=3)
    page.mouse.up()


def test_sweep_brushing_compare_many_and_images(stack: Stack, settings: Settings, chromium: Any, test_output: Path) -> None:
    exp_name = f"sweepview-{uuid.uuid4().hex[:6]}"
    exp = Experiment(exp_name, settings=settings)
    runs = []
    for i in range(N_RUNS):
        alpha = _alpha(i)
        r = exp.start_logging(name=f"a{alpha}", params={"alpha": alpha, "solver": "svd" if i % 3 else "lsqr"}, tags={"seed": str(i % 2)})
        for step in range(10):
            r.log("mse", _mse(alpha) + 100 * (9 - step), step=step)
        if i < 2:
            for step in (10, 20):
                r.log_image(f"samples@{step}", path=_png(test_output / f"sweep-img-{i}-{step}.png", 40 * (i + 1) + step))
        r.complete()
        runs.append(r)
    for r in runs:
        r.flush(30)
    runs[-1].get_metrics()
    by_id = {r.id: _alpha(i) for i, r in enumerate(runs)}
    # the compare page's batched read: one metric of many runs, each downsampled in the engine
    batch = httpx.get(f"{stack.api_url}/api/v1/series", params={"metric": "mse", "runs": ",".join(by_id), "max_points": 4}, timeout=30).json()
    assert set(batch["runs"]) == set(by_id)
    first = batch["runs"][runs[0].id]
    assert first["count"] == 10 and first["downsampled"] and len(first["steps"]) == 4 and first["steps"][0] == 0 and first["steps"][-1] == 9
    assert first["values"][-1] == pytest.approx(_mse(_alpha(0)))

    context = chromium.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(20_000)
    console = Console(page)
    try:
        # --- sweep view: parallel coordinates + scatter, every run selected at first ---
        page.goto(f"{stack.api_url}/#/compare?experiment={exp_name}")
        page.wait_for_selector(f"svg.parcoords[data-runs='{N_RUNS}'][data-selected='{N_RUNS}']")
        assert page.locator("svg.parcoords path.line.on").count() == N_RUNS
        assert page.locator("svg.scatter circle.dot.on").count() == N_RUNS
        assert page.locator("table.sweep-runs tbody tr").count() == N_RUNS
        # the list answers "which alpha gave the lowest mse?": best first
        best = page.get_attribute("table.sweep-runs tbody tr.best", "data-run")
        assert by_id[best] == 0.6
        page.screenshot(path=str(test_output / "dashboard-sweep.png"), full_page=True)

        # brushing the alpha axis of the parallel coordinates narrows the selection
        area = page.locator("svg.parcoords rect.brush-area[data-axis='params.alpha']").bounding_box()
        assert area is not None
        x = area["x"] + area["width"] / 2
        _drag(page, x, area["y"] + area["height"] * 0.15, x, area["y"] + area["height"] * 0.55)
        page.wait_for_function(f"() => Number(document.querySelector('svg.parcoords').dataset.selected) < {N_RUNS}")
        selected = int(page.get_attribute("svg.parcoords", "data-selected") or 0)
        assert 0 < selected < N_RUNS
        title = page.get_attribute("a.btn:has-text('Open in runs list')", "title") or ""
        m = re.fullmatch(r"params\.alpha >= ([\d.e-]+) and params\.alpha <= ([\d.e-]+)", title)
        assert m, title
        lo, hi = float(m.group(1)), float(m.group(2))
        expected = {rid for rid, a in by_id.items() if lo <= a <= hi}
        listed = set(page.eval_on_selector_all("table.sweep-runs tbody tr", "rs => rs.map(r => r.dataset.run)"))
        assert listed == expected and len(expected) == selected
        assert page.locator("svg.parcoords path.line.on").count() == selected
        assert page.locator("svg.scatter circle.dot.on").count() == selected
        page.screenshot(path=str(test_output / "dashboard-sweep-brushed.png"), full_page=True)

        # the scatter's rectangle brushes alpha and mse together: fewer still
        plot = page.locator("svg.scatter rect.brush-area").bounding_box()
        assert plot is not None
        _drag(page, plot["x"] + 2, plot["y"] + 2, plot["x"] + plot["width"] * 0.6, plot["y"] + plot["height"] - 2)
        page.wait_for_function("() => /params\\.alpha >= .* and .*metric\\.mse >= /.test(document.querySelector('.sweep-links a').title)")
        narrowed = int(page.get_attribute("svg.parcoords", "data-selected") or 0)
        assert 0 < narrowed <= N_RUNS

        # the runs list opened from the brushes shows the same runs, filtered by the api
        shown = set(page.eval_on_selector_all("table.sweep-runs tbody tr", "rs => rs.map(r => r.dataset.run)"))
        page.click("a.btn:has-text('Open in runs list')")
        page.wait_for_function("() => location.hash.startsWith('#/?') && location.hash.includes('filter=')")
        page.wait_for_function(f"() => document.querySelectorAll('table.runs tbody tr[data-run]').length === {len(shown)}")
        assert set(page.eval_on_selector_all("table.runs tbody tr[data-run]", "rs => rs.map(r => r.dataset.run)")) == shown

        # --- compare more than 20 runs: every run drawn, bands over the compared runs by a param ---
        ids = ",".join(r.id for r in runs)
        page.goto(f"{stack.api_url}/#/compare?runs={ids}&metrics=mse")
        page.wait_for_function(
            f"() => {{ const u = document.querySelector('.compare-page .chart[data-metric=\"mse\"]')?._plot; "
            f"return u && u.series.length === {N_RUNS + 1} && u.data.slice(1).every(s => s.some(v => v != null)); }}"
        )
        # The summary is its own request, answered after or before the charts are drawn.
        page.wait_for_function(f"() => document.querySelectorAll('table.summary tbody tr').length === {N_RUNS}")
        # the page's smoothing and log y apply to every run's line
        raw = page.evaluate("document.querySelector('.compare-page .chart[data-metric=\"mse\"]')._plot.data[1]")
        page.fill("input[aria-label=smoothing]", "0.8")
        page.dispatch_event("input[aria-label=smoothing]", "input")
        page.wait_for_function("() => document.querySelector('.compare-page .chart[data-metric=\"mse\"]').dataset.smooth === '0.8'")
        # each run's raw line stays, faint, in series 1..N; the smoothed lines follow
        page.wait_for_function(f"() => document.querySelector('.compare-page .chart[data-metric=\"mse\"]')._plot.data.length === {2 * N_RUNS + 1}")
        mse_data = "document.querySelector('.compare-page .chart[data-metric=\"mse\"]')._plot.data"
        faint, smoothed = page.evaluate(f"(() => {{ const d = {mse_data}; return [d[1], d[{N_RUNS + 1}]]; }})()")
        assert faint == raw
        assert len(smoothed) == len(raw) and smoothed[0] == raw[0] and smoothed[-1] != raw[-1]
        page.select_option("select[aria-label='y scale']", "log")
        page.wait_for_function(
            "() => { const u = document.querySelector('.compare-page .chart[data-metric=\"mse\"]')?._plot; "
            f"return u && u.scales.y.distr === 3 && u.series.length === {2 * N_RUNS + 1} && u.data.slice(1).every(s => s.some(v => v != null)); }}"
        )
        assert "smooth=0.8" in page.evaluate("location.hash") and "y=log" in page.evaluate("location.hash")
        page.select_option("select[aria-label='aggregate over']", "runs")
        page.fill("input[aria-label='group by']", "param.solver")
        page.click(".compare-page button.primary:has-text('Show')")
        page.wait_for_selector(".compare-page .chart.agg[data-groups='2']")
        assert page.evaluate("document.querySelector('.chart.agg')._plot.series.length") == 1 + 2 * 3  # mean, +σ, −σ per group

        # --- images side by side at one step ---
        page.wait_for_function("() => document.querySelectorAll(\".compare-images tr[data-image='samples'] td[data-run] img\").length === 2")
        cells = page.eval_on_selector_all("tr[data-image='samples'] td[data-run]", "cs => cs.map(c => [c.dataset.run, c.dataset.step])")
        assert sorted(map(tuple, cells)) == sorted([(runs[0].id, "20"), (runs[1].id, "20")])
        page.fill("input[aria-label='image step']", "0")
        page.dispatch_event("input[aria-label='image step']", "input")
        page.wait_for_function("() => [...document.querySelectorAll(\"tr[data-image='samples'] td[data-run]\")].every(c => c.dataset.step === '10')")
        page.screenshot(path=str(test_output / "dashboard-compare-many.png"), full_page=True)
        assert console.errors == [], console.errors
    except Exception:
        print("console errors:", console.errors)
        page.screenshot(path=str(test_output / "dashboard-compare-failure.png"), full_page=True)
        raise
    finally:
        context.close()
