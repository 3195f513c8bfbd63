"""Chart controls on the run page in Chromium (dashboard/chartctl.js): smoothing draws a
smoothed line over the faint raw one, log y changes the axis, each x-axis choice, the cursor
is shared by the page's charts, a drag zooms and refetches that range at full resolution,
and the choices survive a reload through the URL."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from runstream import Experiment
from runstream.config import Settings
from tests.conftest import Stack
from tests.test_browser import Console

pytestmark = [pytest.mark.one_engine, pytest.mark.browser]

STEPS = 2000


def _plot(page: Any, metric: str, expr: str) -> Any:
    return page.evaluate(f"() => {{ const u = document.querySelector('.chart[data-metric=\"{metric}\"]')._plot; return {expr}; }}")


def test_chart_controls(stack: Stack, settings: Settings, chromium: Any, test_output: Path) -> None:
    exp = Experiment(f"charts-{uuid.uuid4().hex[:6]}", settings=settings)
    run = exp.start_logging(name="long")
    run.log("loss", 2.5, description="training loss per step", step=0)
    for step in range(1, STEPS):
        noise = 0.3 * math.sin(step * 1.7) * math.exp(-step / 800)
        run.log_metrics({"loss": 2.5 * math.exp(-step / 400) + 0.05 + noise, "accuracy": 1 - math.exp(-step / 300)}, step=step)
    run.complete()
    run.flush(30)
    assert len(run.get_metrics()["loss"]) == STEPS

    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    console = Console(page)
    series_requests: list[str] = []
    page.on("request", lambda r: series_requests.append(r.url) if "/metrics/loss" in r.url else None)
    try:
        page.goto(f"{stack.api_url}/#/runs/{run.id}")
        page.wait_for_function("() => Number(document.querySelector('.chart[data-metric=\"loss\"]')?.dataset.points) > 100")
        page.wait_for_function("() => Number(document.querySelector('.chart[data-metric=\"accuracy\"]')?.dataset.points) > 100")
        assert page.inner_text('.chart-card[data-metric="loss"] .desc') == "training loss per step"
        assert _plot(page, "loss", "u.series.length") == 2  # x + raw

        # smoothing: a faint raw line and a smoothed one that differs from it
        page.fill("input[aria-label=smoothing]", "0.9")
        page.dispatch_event("input[aria-label=smoothing]", "input")
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"loss\"]')._plot.series.length === 3")
        raw, smooth = _plot(page, "loss", "[u.data[1], u.data[2]]")
        assert len(raw) == len(smooth) > 100
        diffs = [abs(a - b) for a, b in zip(raw, smooth) if a is not None and b is not None]
        assert max(diffs) > 0.05, "the smoothed line equals the raw one"
        assert _plot(page, "loss", "u.series[1].stroke()").startswith("rgba("), "the raw line is not faint"
        assert "smooth=0.9" in page.evaluate("location.hash")

        # log y: the scale is log10, its range is positive and the y ticks are no longer evenly spaced
        lin_min, lin_ticks = _plot(page, "loss", "[u.scales.y.min, u.axes[1]._splits]")
        lin_gaps = {round(b - a, 9) for a, b in zip(lin_ticks, lin_ticks[1:])}
        assert len(lin_gaps) == 1, lin_ticks
        page.select_option("select[aria-label='y scale']", "log")
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"loss\"]')._plot.scales.y.distr === 3")
        log_min, log_ticks = _plot(page, "loss", "[u.scales.y.min, u.axes[1]._splits]")
        assert log_min > 0 and log_min != lin_min, (lin_min, log_min)
        assert 0.1 in log_ticks or 1 in log_ticks, log_ticks  # a decade on the axis
        assert len({round(b - a, 9) for a, b in zip(log_ticks, log_ticks[1:])}) > 1, log_ticks
        page.select_option("select[aria-label='y scale']", "lin")
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"loss\"]')._plot.scales.y.distr === 1")

        # each x-axis choice
        steps = _plot(page, "loss", "u.data[0]")
        assert steps[0] == 0 and steps[-1] == STEPS - 1 and all(isinstance(s, int) for s in steps)
        page.select_option("select[aria-label='x axis']", "rel")
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"loss\"]').dataset.x === 'rel'")
        rel = _plot(page, "loss", "u.data[0]")
        assert len(rel) == len(steps) and 0 <= rel[0] <= rel[-1] < 600, rel[:3]
        page.select_option("select[aria-label='x axis']", "wall")
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"loss\"]')._plot.scales.x.time === true")
        wall = _plot(page, "loss", "u.data[0]")
        assert wall[0] > 1.6e9 and abs((wall[-1] - wall[0]) - (rel[-1] - rel[0])) < 1e-6
        page.select_option("select[aria-label='x axis']", "metric:accuracy")
        page.wait_for_function(
            "() => { const u = document.querySelector('.chart[data-metric=\"loss\"]')._plot; return u.data[0].length > 100 && u.data[0][0] < 0.05; }"
        )
        xs = _plot(page, "loss", "u.data[0]")
        assert 0 <= xs[0] and xs[-1] <= 1 and xs == sorted(xs), "x is not accuracy"
        assert _plot(page, "loss", "u.axes[0].label") == "accuracy"
        page.screenshot(path=str(test_output / "dashboard-charts-x-metric.png"), full_page=False)

        # a chart's own override: accuracy on log y while the page stays linear
        page.click("button[aria-label='controls of accuracy']")
        page.select_option("select[aria-label='y scale of accuracy']", "log")
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"accuracy\"]')._plot.scales.y.distr === 3")
        assert _plot(page, "loss", "u.scales.y.distr") == 1
        page.select_option("select[aria-label='x axis']", "step")
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"loss\"]').dataset.x === 'step'")

        # the cursor is synchronised: hovering loss moves accuracy's cursor
        over = page.locator('.chart[data-metric="loss"] .u-over').bounding_box()
        assert over is not None
        page.mouse.move(over["x"] + over["width"] * 0.5, over["y"] + over["height"] * 0.5)
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"accuracy\"]')._plot.cursor.idx != null")
        idx_loss = _plot(page, "loss", "u.data[0][u.cursor.idx]")
        idx_acc = _plot(page, "accuracy", "u.data[0][u.cursor.idx]")
        assert abs(idx_loss - idx_acc) <= STEPS / 100, (idx_loss, idx_acc)

        # zoom: a drag refetches the range from the api at full resolution
        assert page.get_attribute('.chart[data-metric="loss"]', "data-points") != str(STEPS)  # downsampled at first
        before = len(series_requests)
        page.mouse.move(over["x"] + over["width"] * 0.40, over["y"] + over["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(over["x"] + over["width"] * 0.45, over["y"] + over["height"] * 0.5, steps=5)
        page.mouse.up()
        page.wait_for_function("() => /^\\d+\\.\\.\\d+$/.test(document.querySelector('.chart[data-metric=\"loss\"]').dataset.zoom || '')")
        zoom = page.get_attribute('.chart[data-metric="loss"]', "data-zoom")
        a, b = (int(x) for x in zoom.split(".."))
        assert 0 < a < b < STEPS
        fetched = [u for u in series_requests[before:] if f"from_step={a}" in u and f"to_step={b}" in u]
        assert fetched, series_requests[before:]
        page.wait_for_function(f"() => document.querySelector('.chart[data-metric=\"loss\"]')._plot.data[0].length === {b - a + 1}")
        assert _plot(page, "loss", "u.data[0]") == list(range(a, b + 1))  # every step: full resolution
        page.wait_for_function(f"() => document.querySelector('.chart[data-metric=\"accuracy\"]').dataset.zoom === '{a}..{b}'")
        assert f"zoom={a}..{b}" in page.evaluate("location.hash")
        page.screenshot(path=str(test_output / "dashboard-charts-zoomed.png"), full_page=False)

        # the URL keeps the choices: a reload restores them
        page.reload()
        page.wait_for_function(f"() => document.querySelector('.chart[data-metric=\"loss\"]')?._plot?.data[0].length === {b - a + 1}")
        assert page.input_value("input[aria-label=smoothing]") == "0.9"
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"accuracy\"]')?._plot?.scales.y.distr === 3")
        assert _plot(page, "loss", "u.series.length") == 3
        page.click("text=Reset zoom")
        page.wait_for_function("() => !document.querySelector('.chart[data-metric=\"loss\"]').dataset.zoom")
        page.wait_for_function("() => document.querySelector('.chart[data-metric=\"loss\"]')._plot.data[0].slice(-1)[0] === " + str(STEPS - 1))
        page.screenshot(path=str(test_output / "dashboard-charts.png"), full_page=True)
        assert console.errors == [], console.errors
    except Exception:
        print("console errors:", console.errors)
        page.screenshot(path=str(test_output / "dashboard-charts-failure.png"), full_page=True)
        raise
    finally:
        context.close()
