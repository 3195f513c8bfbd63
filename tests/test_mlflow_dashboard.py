"""Runs logged through the real `mlflow` client as a user sees them on the dashboard (Chromium):
the runs list (names, Completed/Failed, the experiment, param columns, the nested child under
its parent), the parent's run page opened by the link MLflow prints (params, the user's tags
apart from MLflow's own mlflow.* tags, a chart of each metric with every logged point), and
steps logged through MLflow while that page is open, drawn without a reload."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.test_browser import Console
from tests.test_mlflow import MlflowClient, _name, mlflow, tracking  # noqa: F401  (tracking is the fixture)

pytestmark = [pytest.mark.one_engine, pytest.mark.browser]

STEPS = 50
PARAMS = {"lr": "0.01", "batch_size": "32", "optimizer": "adam"}
HIDDEN = ("mlflow.runName", "mlflow.parentRunId")  # the page's title and its "parent run" crumb


def _loss(step: int) -> float:
    return 2.0 * math.exp(-step / 20) + 0.05 * math.sin(step)


def _accuracy(step: int) -> float:
    return 1 - math.exp(-step / 15)


def _plot(page: Any, metric: str, expr: str) -> Any:
    """An expression of the metric's uPlot instance `u` (charts.js puts it on the chart's box)."""
    return page.evaluate(f"() => {{ const u = document.querySelector('.chart[data-metric=\"{metric}\"]')._plot; return {expr}; }}")


def _await_points(page: Any, metric: str, n: int, timeout: float = 20_000) -> None:
    page.wait_for_function(f"() => Number(document.querySelector('.chart[data-metric=\"{metric}\"]')?.dataset.points) === {n}", timeout=timeout)


def _kv(page: Any, card: str) -> dict[str, str]:
    """A side card's key/value table (Tags, Params, Run) as the page shows it."""
    rows = page.eval_on_selector_all(
        f"xpath=//section[contains(@class,'side-card')][h2[normalize-space()='{card}']]//table[contains(@class,'kv')]//tr",
        "rows => rows.map(r => [r.querySelector('th').textContent, r.querySelector('td').textContent])",
    )
    return dict(rows)


def _row(run_id: str) -> str:
    return f'table.runs tr[data-run="{run_id}"]'


def test_mlflow_runs_on_the_dashboard(
    tracking: MlflowClient,  # noqa: F811  (the fixture imported above)
    stack: Stack,
    chromium: Any,
    test_output: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # --- a training script's MLflow calls: params, a tag, two metrics at 50 steps, a nested child ---
    exp_name = _name("mlflow-dash")
    mlflow.set_experiment(exp_name)
    with mlflow.start_run(run_name="train-parent") as parent:
        mlflow.log_params(PARAMS)
        mlflow.set_tag("team", "vision")
        mlflow.set_tag("scratch", "to be deleted")
        for step in range(STEPS):
            mlflow.log_metric("loss", _loss(step), step=step)
            mlflow.log_metric("accuracy", _accuracy(step), step=step)
        with mlflow.start_run(run_name="fold-0", nested=True) as child:
            mlflow.log_params({"lr": "0.02", "fold": "0"})
            mlflow.log_metric("loss", 0.5, step=0)
    # ... and one that crashes: its `with` block ends it FAILED
    with pytest.raises(RuntimeError), mlflow.start_run(run_name="diverged") as failed:
        mlflow.log_params({"lr": "1.0", "batch_size": "64", "optimizer": "sgd"})
        mlflow.log_metric("loss", 87.5, step=0)
        raise RuntimeError("loss diverged")
    pid, cid, fid = parent.info.run_id, child.info.run_id, failed.info.run_id
    printed = re.search(r"View run train-parent at: (\S+)", capsys.readouterr().out)
    tracking.delete_tag(pid, "scratch")  # removed after the fact: stored as a marker value the dashboard must not show
    # read-after-write: each is stored once get_run answers
    assert tracking.get_run(pid).info.status == "FINISHED"
    assert tracking.get_run(cid).info.status == "FINISHED"
    assert tracking.get_run(fid).info.status == "FAILED"
    assert len(tracking.get_metric_history(pid, "accuracy")) == STEPS
    system = {k: v for k, v in tracking.get_run(pid).data.tags.items() if k.startswith("mlflow.") and k not in HIDDEN}
    assert {"mlflow.user", "mlflow.source.name", "mlflow.source.type"} <= set(system)

    context = chromium.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    console = Console(page)
    try:
        # --- the runs list, all experiments: names, statuses, the experiment, param columns, tags ---
        page.goto(f"{stack.api_url}/#/?params=lr,batch_size,optimizer&metrics=loss")
        for rid in (pid, cid, fid):
            page.wait_for_selector(_row(rid))
        names = {rid: page.inner_text(f"{_row(rid)} td.name a") for rid in (pid, cid, fid)}
        assert names == {pid: "train-parent", cid: "fold-0", fid: "diverged"}
        statuses = {rid: page.inner_text(f"{_row(rid)} .badge") for rid in (pid, cid, fid)}
        assert statuses == {pid: "Completed", cid: "Completed", fid: "Failed"}
        for rid in (pid, cid, fid):
            assert page.inner_text(f"{_row(rid)} td a.muted-link") == exp_name
        shown = {
            rid: page.eval_on_selector_all(f"{_row(rid)} td.param", "cs => cs.map(c => [c.dataset.param, c.textContent])") for rid in (pid, cid, fid)
        }
        assert shown == {
            pid: [["lr", "0.01"], ["batch_size", "32"], ["optimizer", "adam"]],
            cid: [["lr", "0.02"], ["batch_size", ""], ["optimizer", ""]],
            fid: [["lr", "1.0"], ["batch_size", "64"], ["optimizer", "sgd"]],
        }
        assert page.inner_text(f"{_row(cid)} td.name") == "fold-0 child"
        # the user's tag; not MLflow's mlflow.* tags (they took the three chips before), not the deleted one
        chips = {rid: page.eval_on_selector_all(f"{_row(rid)} td.tags .chip", "cs => cs.map(c => c.textContent)") for rid in (pid, cid, fid)}
        assert chips == {pid: ["team=vision"], cid: [], fid: []}

        # --- the experiment picker has the MLflow experiment; in it, the child nests under its parent ---
        page.wait_for_selector(f"select[aria-label=experiment] option[value='{exp_name}']", state="attached")
        assert page.inner_text(f"select[aria-label=experiment] option[value='{exp_name}']") == f"{exp_name} (3)"
        page.select_option("select[aria-label=experiment]", exp_name)
        page.wait_for_function(f"() => location.hash.includes('experiment={exp_name}')")
        page.wait_for_function("() => document.querySelectorAll('table.runs tbody tr[data-run]').length === 3")
        page.check("input[aria-label='nest child runs']")
        page.wait_for_function("() => document.querySelectorAll('table.runs tbody tr[data-run]').length === 2")
        page.click("button[aria-label='child runs of train-parent']")
        page.wait_for_selector(f'tr.child-row[data-run="{cid}"]')
        ids = page.eval_on_selector_all("table.runs:not(.nested) > tbody > tr[data-run]", "rows => rows.map(r => r.dataset.run)")
        assert ids == [fid, pid, cid], ids  # newest first; the child right under its parent
        page.screenshot(path=str(test_output / "mlflow-runs.png"), full_page=False)

        # --- the parent's run page, by the link MLflow's client printed ("View run train-parent at: ...") ---
        assert printed, "MLflow's client printed no link to the run"
        experiment_id = tracking.get_experiment_by_name(exp_name).experiment_id
        assert printed[1] == f"{stack.api_url}/#/experiments/{experiment_id}/runs/{pid}"
        page.goto(printed[1])
        _await_points(page, "loss", STEPS)
        _await_points(page, "accuracy", STEPS)
        page.wait_for_selector("#live[data-state=open]")
        assert page.inner_text(".title-row h1") == "train-parent"
        assert page.inner_text(".title-row .badge") == "Completed"
        assert page.inner_text("nav.crumbs a[href^='#/?experiment=']") == exp_name
        assert _kv(page, "Params") == PARAMS
        assert _kv(page, "Tags") == {"team": "vision"}
        assert _kv(page, "Run") == system  # who ran it from where: MLflow's own tags, apart from the user's
        kids = page.eval_on_selector_all(
            "ul.children li", "ls => ls.map(l => [l.querySelector('.badge').textContent, l.querySelector('a').textContent])"
        )
        assert kids == [["Completed", "fold-0"]]
        assert _plot(page, "loss", "u.data[0]") == list(range(STEPS))
        assert _plot(page, "loss", "u.data[1]") == pytest.approx([_loss(s) for s in range(STEPS)])
        assert _plot(page, "accuracy", "u.data[0]") == list(range(STEPS))
        assert _plot(page, "accuracy", "u.data[1]") == pytest.approx([_accuracy(s) for s in range(STEPS)])

        # --- live: the script resumes the run and logs more steps; the open page draws them ---
        more = range(STEPS, STEPS + 5)
        with mlflow.start_run(run_id=pid):  # resumed: Running again until the block ends it FINISHED
            for step in more:
                mlflow.log_metric("loss", _loss(step), step=step)
            _await_points(page, "loss", STEPS + len(more), timeout=30_000)
            page.wait_for_selector(".title-row .badge.st-running", timeout=30_000)
        page.wait_for_selector(".title-row .badge.st-completed", timeout=30_000)
        assert _plot(page, "loss", "u.data[0]") == list(range(STEPS + len(more)))
        assert _plot(page, "loss", "u.data[1]")[-len(more) :] == pytest.approx([_loss(s) for s in more])
        assert _plot(page, "accuracy", "u.data[0].length") == STEPS
        # the counts the page shows settle on the stored ones: 55 loss points, 105 points in all
        page.wait_for_function(
            f"() => document.querySelector('.chart-card[data-metric=loss] footer')?.textContent.startsWith('{STEPS + len(more)} pts')"
        )
        page.wait_for_function(f"() => document.querySelector('.meta-line')?.textContent.includes('points {2 * STEPS + len(more)}')")
        page.screenshot(path=str(test_output / "mlflow-run.png"), full_page=True)
        assert console.errors == [], console.errors
    except Exception:
        print("console errors:", console.errors)
        page.screenshot(path=str(test_output / "mlflow-failure.png"), full_page=True)
        raise
    finally:
        context.close()
