"""The dashboard in a real browser: live run page, runs list, compare page.

Drives Debian's Chromium through Playwright against the session stack.
"""

from __future__ import annotations

import math
import struct
import threading
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest

from runstream import Experiment
from runstream.config import Settings
from tests.conftest import Stack

# The subject is not storage: the embedded engine is enough (tests/conftest.py).
pytestmark = [pytest.mark.one_engine, pytest.mark.browser]

# Endpoints another change adds; until they land the dashboard shows a message and
# Chromium logs the 404 as a failed resource, which is not a dashboard error.
OPTIONAL_ENDPOINTS = ("/api/v1/compare", "/api/v1/aggregate")


def _png(width: int = 96, height: int = 64) -> bytes:
    """A small gradient PNG, written by hand so the test needs no imaging library."""
    raw = b"".join(b"\x00" + b"".join(bytes((int(255 * x / width), int(255 * y / height), 200)) for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


class Console:
    """Collects JS errors: console.error messages and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        if "Failed to load resource" in msg.text and any(e in url for e in OPTIONAL_ENDPOINTS):
            return
        self.errors.append(f"console.error: {msg.text} ({url})")


def _points(page: Any, metric: str) -> int:
    return int(page.get_attribute(f'.chart[data-metric="{metric}"]', "data-points") or 0)


def test_dashboard_live_run_page_runs_list_and_compare(stack: Stack, settings: Settings, chromium: Any, test_output: Path) -> None:
    exp_name = f"browser-{uuid.uuid4().hex[:6]}"
    exp = Experiment(exp_name, settings=settings)
    evil = '<img src=x onerror="window.__xss=1">'
    run = exp.start_logging(name="ridge-live", tags={"model": "ridge", "note": evil}, params={"alpha": 0.5, "solver": "auto"})
    for step in range(30):
        run.log_metrics({"loss": 2.0 * math.exp(-step / 25) + 0.05 * math.sin(step), "accuracy": 1 - math.exp(-step / 20)}, step=step)
    run.log_list("Fibonacci", [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89])
    for i in range(-10, 10):
        run.log("Sigmoid", 1 / (1 + math.exp(-i)))
    for i in range(24):
        angle = i * math.pi / 12
        run.log_row("Cosine Wave", angle=angle, cos=math.cos(angle))
    angles = [i * math.pi / 12 for i in range(24)]
    run.log_table("Sine Wave", {"angle": angles, "sine": [math.sin(a) for a in angles]})
    for i in range(5):
        run.log_text("stdout", f"epoch {i}: loss={2.0 * math.exp(-i / 5):.4f}")
    run.log_text("stderr", "warning: learning rate schedule not set, using constant")
    run.upload_file("outputs/model.pkl", _bytes_io(b"not really a model" * 100))
    run.log_image("residuals", path=_write_png(test_output))
    child = run.child_run(name="fold-0", params={"fold": 0})
    child.log("loss", 0.4)
    child.complete()
    assert run.get_metrics()["loss"][29] is not None  # everything above is stored

    context = chromium.new_context(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(20_000)
    console = Console(page)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    try:
        # --- run page: initial charts, then live points without a reload ---
        page.goto(f"{stack.api_url}/#/runs/{run.id}")
        page.evaluate("window.__marker = 'same-document'")
        page.wait_for_function("() => Number(document.querySelector('.chart[data-metric=\"loss\"]')?.dataset.points) >= 30")
        page.wait_for_selector("#live[data-state=open]")
        page.wait_for_selector(".chart-card[data-table='Cosine Wave'] .chart[data-points='24']")
        page.wait_for_selector(".images img")
        page.wait_for_function("() => document.querySelector('pre.log')?.textContent.includes('epoch 4')")
        loaded = len(navigations)
        assert _points(page, "loss") == 30

        stop = threading.Event()

        def keep_logging() -> None:
            for step in range(30, 90):
                if stop.is_set():
                    return
                run.log_metrics({"loss": 2.0 * math.exp(-step / 25) + 0.05 * math.sin(step), "accuracy": 1 - math.exp(-step / 20)}, step=step)
                if step % 10 == 9:
                    run.log_text("stdout", f"epoch {step // 10}: step {step}")
                    run.flush(10)
                    stop.wait(0.2)

        writer = threading.Thread(target=keep_logging, name="browser-test-writer")
        writer.start()
        try:
            page.wait_for_function("() => Number(document.querySelector('.chart[data-metric=\"loss\"]')?.dataset.points) > 30")
            page.wait_for_function("() => Number(document.querySelector('.chart[data-metric=\"loss\"]')?.dataset.points) >= 90", timeout=30_000)
            page.wait_for_function("() => Number(document.querySelector('.chart[data-metric=\"accuracy\"]')?.dataset.points) >= 90")
            page.wait_for_function("() => document.querySelector('pre.log')?.textContent.includes('step 89')")
        finally:
            stop.set()
            writer.join(30)
        assert page.evaluate("window.__marker") == "same-document", "the page reloaded"
        assert len(navigations) == loaded, f"navigated while live: {navigations}"
        assert _points(page, "loss") == 90

        # user text is shown as text, never parsed as HTML
        assert page.evaluate("window.__xss") is None
        assert evil in page.inner_text("aside.side")

        run.complete()
        page.wait_for_selector(".title-row .badge.st-completed")
        page.screenshot(path=str(test_output / "dashboard-run.png"), full_page=True)

        # --- runs list: a small sweep, live status, metric columns ---
        sweep = []
        for i, alpha in enumerate([0.05, 0.25, 0.45, 0.65, 0.85]):
            r = exp.start_logging(
                name=f"alpha-{alpha:.2f}", tags={"model": "ridge", "group": "low" if alpha < 0.5 else "high"}, params={"alpha": alpha}
            )
            for step in range(40):
                r.log_metrics(
                    {
                        "loss": (1.2 + alpha) * math.exp(-step / (15 + 10 * i)) + 0.3 * alpha,
                        "accuracy": (0.95 - 0.2 * alpha) * (1 - math.exp(-step / 12)),
                    },
                    step=step,
                )
            sweep.append(r)
        for r in sweep[:3]:
            r.complete()
        sweep[3].fail("diverged")
        for r in sweep:
            r.flush(30)
        sweep[-1].get_metrics()

        page.goto(f"{stack.api_url}/#/?experiment={exp_name}&metrics=loss,accuracy")
        page.wait_for_function(f"() => document.querySelectorAll('table.runs tbody tr[data-run]').length >= {len(sweep) + 2}")
        assert page.evaluate("window.__marker") == "same-document"
        # live status in the list: the still-running sweep run completes
        row = f'tr[data-run="{sweep[-1].id}"]'
        page.wait_for_selector(f"{row} .badge.st-running")
        sweep[-1].complete()
        page.wait_for_selector(f"{row} .badge.st-completed")
        page.wait_for_selector(f'tr[data-run="{sweep[3].id}"] .badge.st-failed')
        # sort by the last loss, ascending: the best run first
        page.click("th[title='sort by last of loss']")
        page.wait_for_function("() => location.hash.includes('order=')")
        page.wait_for_selector("th[title='sort by last of loss'][aria-sort=ascending]")
        last_losses = page.eval_on_selector_all(
            "table.runs tbody tr[data-run]", "rows => rows.map(r => Number(r.querySelectorAll('td.num')[0].textContent))"
        )
        assert len(last_losses) >= len(sweep) + 1 and last_losses == sorted(last_losses), last_losses
        for r in sweep[:3]:
            page.check(f'tr[data-run="{r.id}"] input[type=checkbox]')
        page.wait_for_selector(".selbar.show")
        page.screenshot(path=str(test_output / "dashboard-runs.png"), full_page=False)

        # --- compare page ---
        page.click(".selbar a.primary")
        page.wait_for_function("() => location.hash.startsWith('#/compare')")
        page.wait_for_function(
            "() => { const c = document.querySelector('.compare-page .chart[data-metric=\"loss\"]'); return c && Number(c.dataset.points) >= 40; }"
        )
        page.wait_for_selector("table.summary tbody tr")
        assert page.locator("table.summary tbody tr").count() == 3
        # the grouped view either draws or explains why it cannot
        page.wait_for_selector(".compare-page .chart.agg[data-points], .compare-page .msg")
        page.screenshot(path=str(test_output / "dashboard-compare.png"), full_page=True)

        # --- dark theme (prefers-color-scheme) on the run page ---
        page.emulate_media(color_scheme="dark")
        page.goto(f"{stack.api_url}/#/runs/{run.id}")
        page.wait_for_function("() => Number(document.querySelector('.chart[data-metric=\"loss\"]')?.dataset.points) >= 90")
        page.screenshot(path=str(test_output / "dashboard-run-dark.png"), full_page=False)

        assert console.errors == [], console.errors
    except Exception:
        page.screenshot(path=str(test_output / "dashboard-failure.png"), full_page=True)
        raise
    finally:
        context.close()


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def _write_png(folder: Path) -> Path:
    path = folder / "browser-test-residuals.png"
    path.write_bytes(_png())
    return path
