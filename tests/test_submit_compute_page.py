"""The dashboard's compute page in a real browser: per compute target, the submitted runs
queued and active now, live; finished runs leave it (SPEC: Dashboard, compute page)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runstream import Experiment, ScriptRunConfig
from runstream.config import Settings
from runstream.ingest.compute import LocalCompute
from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.test_browser import Console
from tests.test_submit import ROOT, WAIT_FOR_FILE

pytestmark = [pytest.mark.one_engine, pytest.mark.browser]


@pytest.fixture()
def page(settings: Settings) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (make chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 800})
        finally:
            browser.close()


def _rows(page: Any, target: str) -> list[tuple[str, str]]:
    """(status, run name) of each row of a target's card, in order."""
    rows: list[tuple[str, str]] = page.eval_on_selector_all(
        f'section.compute-target[data-target="{target}"] tbody tr',
        "rows => rows.map(r => [r.querySelector('.badge').textContent, r.querySelector('td:nth-child(2) a').textContent])",
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_compute_page_shows_queued_and_active_runs_per_target_live(
    tmp_path: Path, settings: Settings, page: Any, test_output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    src = tmp_path / "src"
    src.mkdir()
    (src / "wait.py").write_text(WAIT_FOR_FILE)
    tag = uuid.uuid4().hex[:6]
    gpu, cpu = LocalCompute(f"gpu-box-{tag}", slots=1), LocalCompute(f"cpu-box-{tag}", slots=1)
    exp = Experiment(f"compute-page-{tag}", settings=settings)
    go = {n: tmp_path / f"go-{n}" for n in ("a", "b", "c")}
    exp.submit(ScriptRunConfig(src, "wait.py", arguments=[go["a"]], compute_target=gpu), name="train-a")
    exp.submit(ScriptRunConfig(src, "wait.py", arguments=[go["b"]], compute_target=gpu), name="train-b")
    exp.submit(ScriptRunConfig(src, "wait.py", arguments=[go["c"]], compute_target=cpu), name="eval-c")
    console = Console(page)
    page.goto(f"{settings.api}/#/compute")
    try:
        _watch(page, settings, gpu, cpu, go, console, test_output)
    finally:
        for path in go.values():  # the scripts end, whatever happened: this process waits for them at exit
            path.touch()


def _watch(page: Any, settings: Settings, gpu: LocalCompute, cpu: LocalCompute, go: dict[str, Path], console: Console, test_output: Path) -> None:
    def until(predicate: Any, what: str, timeout: float = 30) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            page.wait_for_timeout(100)
        page.screenshot(path=str(test_output / "compute-page-failed.png"), full_page=True)
        raise AssertionError(f"timed out waiting for {what}: {page.inner_text('#view')[:500]!r} {console.errors}")

    until(
        lambda: _rows(page, gpu.name) == [("Running", "train-a"), ("Queued", "train-b")] and _rows(page, cpu.name) == [("Running", "eval-c")],
        "both targets",
    )
    assert "1 running · 1 queued" in page.text_content(f'section.compute-target[data-target="{gpu.name}"] h2')
    page.screenshot(path=str(test_output / "compute-page-queued.png"), full_page=True)
    go["a"].touch()  # train-a finishes: it leaves, train-b runs
    until(lambda: _rows(page, gpu.name) == [("Running", "train-b")], "train-a gone, train-b running")
    go["b"].touch()
    go["c"].touch()
    until(lambda: not _rows(page, gpu.name) and not _rows(page, cpu.name), "both targets empty")
    page.screenshot(path=str(test_output / "compute-page-empty.png"), full_page=True)
    page.click("a[data-nav=compute]")
    assert page.get_attribute("a[data-nav=compute]", "class") == "active"
    assert not console.errors, console.errors
