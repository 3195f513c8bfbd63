"""Chart controls on the compare page in Chromium (dashboard/compare.js reusing chartctl.js):
each x-axis choice (step, relative time, wall time) changes every chart's x scale, smoothing
draws each run's raw line faint behind its smoothed one, and a drag zooms the page to a step
range that is read again (GET /api/v1/series?from_step=&to_step=, or per run with time on x)
at full resolution for every compared run; the choices survive a reload through the URL."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from runstream import Experiment
from runstream.config import Settings
from tests.conftest import Stack
from tests.test_browser import Console

pytestmark = [pytest.mark.one_engine, pytest.mark.browser]

N_RUNS = 10  # more than 8: the page reads the runs' series in batches (GET /api/v1/series)
STEPS = 1500  # more points than the chart has pixels: downsampled until zoomed

CHART = '.compare-page .chart[data-metric="loss"]'


def _plot(page: Any, expr: str) -> Any:
    return page.evaluate(f"() => {{ const u = document.querySelector('{CHART}')._plot; return {expr}; }}")


def _wait_plot(page: Any, cond: str) -> None:
    page.wait_for_function(f"() => {{ const u = document.querySelector('{CHART}')?._plot; return !!u && ({cond}); }}")


def _loss(i: int, step: int) -> float:
    return (1 + 0.2 * i) * math.exp(-step / 500) + 0.05 + 0.2 * math.sin(step * 1.3 + i)


def test_compare_chart_controls(stack: Stack, settings: Settings, chromium: Any, test_output: Path) -> None:
    exp = Experiment(f"cmpctl-{uuid.uuid4().hex[:6]}", settings=settings)
    runs = []
    for i in range(N_RUNS):
        r = exp.start_logging(name=f"r{i}")
        for step in range(STEPS):
            r.log("loss", _loss(i, step), step=step)
        r.complete()
        runs.append(r)
    for r in runs:
        r.flush(30)
    assert len(runs[-1].get_metrics()["loss"]) == STEPS
    ids = [r.id for r in runs]

    # the batched read takes a step range: every step of it, for each run
    part = httpx.get(
        f"{stack.api_url}/api/v1/series",
        params={"metric": "loss", "runs": ",".join(ids), "max_points": 500, "from_step": 100, "to_step": 200},
        timeout=30,
    ).json()
    assert set(part["runs"]) == set(ids)
    for i, rid in enumerate(ids):
        got = part["runs"][rid]
        assert got["steps"] == list(range(100, 201)) and got["count"] == 101 and not got["downsampled"]
        assert got["values"][0] == pytest.approx(_loss(i, 100))

    context = chromium.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    console = Console(page)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/api/v1/series" in r.url or "/metrics/loss" in r.url else None)
    all_drawn = f"u.series.length === {N_RUNS + 1} && u.data.slice(1).every(s => s.some(v => v != null))"
    try:
        page.goto(f"{stack.api_url}/#/compare?runs={','.join(ids)}&metrics=loss")
        _wait_plot(page, all_drawn)
        # --- x: step (batched reads, downsampled) ---
        steps = _plot(page, "u.data[0]")
        assert steps[0] == 0 and steps[-1] == STEPS - 1 and len(steps) < STEPS
        assert _plot(page, "[u.scales.x.time, u.axes[0].label]") == [False, "step"]
        assert any("/api/v1/series" in u for u in requests) and not any("/metrics/loss" in u for u in requests)
        step_max = _plot(page, "u.scales.x.max")
        assert step_max >= STEPS - 1

        # --- x: relative time, seconds since each run started ---
        page.select_option("select[aria-label='x axis']", "rel")
        _wait_plot(page, f"u.root.parentElement.dataset.x === 'rel' && {all_drawn}")
        rel = _plot(page, "u.data[0]")
        assert 0 <= rel[0] <= rel[-1] < 600, (rel[0], rel[-1])
        assert _plot(page, "[u.scales.x.time, u.axes[0].label]") == [False, "relative time (s)"]
        assert _plot(page, "u.scales.x.max") < 600 < step_max  # the scale changed from steps to seconds
        assert "x=rel" in page.evaluate("location.hash")
        page.screenshot(path=str(test_output / "dashboard-compare-x-rel.png"), full_page=False)

        # --- x: wall time, a time axis of epoch seconds ---
        page.select_option("select[aria-label='x axis']", "wall")
        _wait_plot(page, f"u.scales.x.time === true && {all_drawn}")
        wall = _plot(page, "u.data[0]")
        assert wall[0] > 1.6e9 and _plot(page, "u.scales.x.min") > 1.6e9
        assert _plot(page, "u.axes[0].label") == "wall time"
        assert wall == sorted(wall) and wall[-1] > wall[0]

        page.select_option("select[aria-label='x axis']", "step")
        _wait_plot(page, f"u.root.parentElement.dataset.x === 'step' && u.scales.x.time === false && {all_drawn}")
        assert "x=" not in page.evaluate("location.hash")
        raw_before = _plot(page, "u.data[1]")

        # --- smoothing: each run's raw line faint behind its smoothed line ---
        page.fill("input[aria-label=smoothing]", "0.9")
        page.dispatch_event("input[aria-label=smoothing]", "input")
        _wait_plot(page, f"u.series.length === {2 * N_RUNS + 1} && u.data.length === {2 * N_RUNS + 1}")
        raw, smooth = _plot(page, f"[u.data[1], u.data[{N_RUNS + 1}]]")
        assert raw == raw_before  # the raw series is unchanged, drawn first (behind)
        assert len(raw) == len(smooth) and smooth[0] == raw[0]
        assert max(abs(a - b) for a, b in zip(raw, smooth) if a is not None and b is not None) > 0.05
        faint = _plot(page, f"u.series.slice(1, {N_RUNS + 1}).map(s => s.stroke())")
        solid = _plot(page, f"u.series.slice({N_RUNS + 1}).map(s => s.stroke())")
        assert all(s.startswith("rgba(") for s in faint) and all(s.startswith("#") for s in solid), (faint, solid)
        assert _plot(page, "u.series[1].label").endswith("(raw)")
        assert "smooth=0.9" in page.evaluate("location.hash")
        page.screenshot(path=str(test_output / "dashboard-compare-smoothed.png"), full_page=False)

        # --- drag-zoom: the step range read again at full resolution for every run ---
        over = page.locator(f"{CHART} .u-over").bounding_box()
        assert over is not None
        before = len(requests)
        page.mouse.move(over["x"] + over["width"] * 0.40, over["y"] + over["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(over["x"] + over["width"] * 0.47, over["y"] + over["height"] * 0.5, steps=5)
        page.mouse.up()
        page.wait_for_function(f"() => /^\\d+\\.\\.\\d+$/.test(document.querySelector('{CHART}').dataset.zoom || '')")
        a, b = (int(x) for x in (page.get_attribute(CHART, "data-zoom") or "").split(".."))
        assert 0 < a < b < STEPS and b - a < 400, (a, b)
        sent = [u for u in requests[before:] if "/api/v1/series" in u and f"from_step={a}" in u and f"to_step={b}" in u]
        assert sent, requests[before:]
        n = b - a + 1
        _wait_plot(page, f"u.data[0].length === {n} && u.data.slice(1).every(s => s.every(v => v != null))")
        assert _plot(page, "u.data[0]") == list(range(a, b + 1))  # every step of the range
        zoomed_raw = _plot(page, f"u.data.slice(1, {N_RUNS + 1})")
        for i, ys in enumerate(zoomed_raw):  # for each run, its own values at every step
            assert len(ys) == n and ys[0] == pytest.approx(_loss(i, a)) and ys[-1] == pytest.approx(_loss(i, b))
        assert _plot(page, "[u.scales.x.min, u.scales.x.max]") == [a, b]
        assert f"zoom={a}..{b}" in page.evaluate("location.hash")
        page.screenshot(path=str(test_output / "dashboard-compare-zoomed.png"), full_page=False)

        # zoomed with time on x: each run's range read on its own (with its points' times)
        before = len(requests)
        page.select_option("select[aria-label='x axis']", "rel")
        _wait_plot(page, f"u.root.parentElement.dataset.x === 'rel' && {all_drawn.replace(str(N_RUNS + 1), str(2 * N_RUNS + 1))}")
        page.wait_for_function(f"() => document.querySelector('{CHART}').dataset.zoom === '{a}..{b}'")
        per_run = [u for u in requests[before:] if "/metrics/loss" in u and f"from_step={a}" in u and f"to_step={b}" in u]
        assert {rid for rid in ids if any(f"/runs/{rid}/metrics/loss" in u for u in per_run)} == set(ids), per_run
        rel_zoom = _plot(page, "[u.data[0][0], u.data[0][u.data[0].length - 1]]")
        assert 0 <= rel_zoom[0] <= rel_zoom[1] < 600 and rel_zoom != [a, b]

        # the URL keeps the choices: a reload restores x, smoothing and zoom
        page.reload()
        _wait_plot(page, f"u.root.parentElement.dataset.x === 'rel' && u.series.length === {2 * N_RUNS + 1}")
        page.wait_for_function(f"() => document.querySelector('{CHART}').dataset.zoom === '{a}..{b}'")
        assert page.input_value("input[aria-label=smoothing]") == "0.9"
        assert page.input_value("select[aria-label='x axis']") == "rel"
        page.select_option("select[aria-label='x axis']", "step")
        _wait_plot(page, f"u.root.parentElement.dataset.x === 'step' && u.data[0].length === {n}")
        page.click(".compare-page button:has-text('Reset zoom')")
        page.wait_for_function(f"() => !document.querySelector('{CHART}').dataset.zoom")
        _wait_plot(page, f"u.data[0][u.data[0].length - 1] === {STEPS - 1} && {all_drawn.replace(str(N_RUNS + 1), str(2 * N_RUNS + 1))}")
        assert "zoom=" not in page.evaluate("location.hash")
        page.screenshot(path=str(test_output / "dashboard-compare-controls.png"), full_page=True)
        assert console.errors == [], console.errors
    except Exception:
        print("console errors:", console.errors)
        page.screenshot(path=str(test_output / "dashboard-compare-controls-failure.png"), full_page=True)
        raise
    finally:
        context.close()
