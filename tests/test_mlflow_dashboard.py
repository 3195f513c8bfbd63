"""Runs logged through the real `mlflow` client as a user sees them on the dashboard (Chromium):
the runs list (names, Completed/Failed, the experiment, param columns, the nested child under
its parent), the parent's run page opened by the link MLflow prints (params, the user's tags
apart from MLflow's own mlflow.* tags, a chart of each metric with every logged point), steps
logged through MLflow while that page is open, drawn without a reload, the experiment's link
MLflow prints (the list of that experiment's runs only), tags set and deleted and a param logged
through MLflow while that list is open, shown in their rows without a reload, and an unknown
experiment id."""

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
    chart = f"document.querySelector('.chart[data-metric=\"{metric}\"]')"
    try:
        page.wait_for_function(f"() => Number({chart}?.dataset.points) === {n}", timeout=timeout)
    except Exception as exc:  # say what the page had, so a failure can be told from a slow pipeline
        state = "live: document.querySelector('#live')?.dataset.state"
        seen = page.evaluate(f"() => ({{points: {chart}?.dataset.points, count: {chart}?.dataset.count, {state}}})")
        raise AssertionError(f"{metric}: waited for {n} points, the page has {seen}") from exc


def _kv(page: Any, card: str) -> dict[str, str]:
    """A side card's key/value table (Tags, Params, Run) as the page shows it."""
    rows = page.eval_on_selector_all(
        f"xpath=//section[contains(@class,'side-card')][h2[normalize-space()='{card}']]//table[contains(@class,'kv')]//tr",
        "rows => rows.map(r => [r.querySelector('th').textContent, r.querySelector('td').textContent])",
    )
    return dict(rows)


def _row(run_id: str) -> str:
    return f'table.runs tr[data-run="{run_id}"]'


def _chips(page: Any, run_id: str) -> list[str]:
    """The tag chips of a run's row in the runs list."""
    chips: list[str] = page.eval_on_selector_all(f"{_row(run_id)} td.tags .chip", "cs => cs.map(c => c.textContent)")
    return chips


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
    # ... and a run in another experiment, which that experiment's link must not list
    other_eid = tracking.create_experiment(_name("mlflow-dash-other"))
    oid = tracking.create_run(other_eid, run_name="elsewhere").info.run_id
    tracking.log_param(oid, "lr", "0.5")
    tracking.set_terminated(oid)
    pid, cid, fid = parent.info.run_id, child.info.run_id, failed.info.run_id
    out = capsys.readouterr().out
    printed = re.search(r"View run train-parent at: (\S+)", out)
    experiment_links = set(re.findall(r"View experiment at: (\S+)", out))
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
        for rid in (pid, cid, fid, oid):
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

        # --- the experiment's link MLflow's client printed ("View experiment at: ..."): that experiment's runs only ---
        link = f"{stack.api_url}/#/experiments/{experiment_id}"
        assert experiment_links == {link, f"{stack.api_url}/#/experiments/{other_eid}"}, experiment_links  # one per run's end
        page.goto("about:blank")  # a new document, as a link opened from the terminal is: nothing left of the run page
        page.goto(link)
        page.wait_for_function(f"() => location.hash.startsWith('#/?') && location.hash.includes('experiment={exp_name}')")  # as the picker puts it
        page.wait_for_function("() => document.querySelectorAll('table.runs tbody tr[data-run]').length === 3")
        listed = page.eval_on_selector_all("table.runs tbody tr[data-run]", "rows => rows.map(r => r.dataset.run)")
        assert sorted(listed) == sorted([pid, cid, fid]), listed  # not oid, logged to another experiment
        page.wait_for_function(f"() => document.querySelector('select[aria-label=experiment]').value === '{exp_name}'")
        assert page.inner_text(".page-head .title-row .muted") == "3 runs"

        # --- tags and params changed through MLflow while the list is open: the rows follow, no reload ---
        # the link's query is kept; metrics chosen, so the list has no default columns to re-render for
        page.goto(f"{link}?params=lr,batch_size&metrics=loss")
        page.wait_for_function(
            f"() => location.hash.startsWith('#/?') && ['experiment={exp_name}', 'batch_size'].every(q => location.hash.includes(q))"
        )
        page.wait_for_selector(f"{_row(cid)} td.param[data-param=batch_size]")
        # the rows as they are now: a reload would replace them (and their marks)
        page.evaluate(
            "() => { performance.clearResourceTimings(); document.querySelectorAll('table.runs tr[data-run]').forEach(tr => { tr._mark = 1; }); }"
        )

        def chips_of(rid: str) -> str:
            return f"() => JSON.stringify([...document.querySelectorAll('{_row(rid)} td.tags .chip')].map(c => c.textContent))"

        tracking.set_tag(pid, "stage", "live")
        page.wait_for_function(f"{chips_of(pid)} === JSON.stringify(['team=vision', 'stage=live'])")
        for i in range(5):  # a burst: the row is reread at most once per 250 ms, and shows the last value
            tracking.set_tag(pid, "stage", f"live-{i}")
        page.wait_for_function(f"{chips_of(pid)} === JSON.stringify(['team=vision', 'stage=live-4'])")
        tracking.delete_tag(pid, "stage")
        page.wait_for_function(f"{chips_of(pid)} === JSON.stringify(['team=vision'])")
        tracking.log_param(cid, "batch_size", "16")  # a param the child had not logged
        page.wait_for_function(f"() => document.querySelector('{_row(cid)} td.param[data-param=batch_size]').textContent === '16'")
        same = page.evaluate("() => [...document.querySelectorAll('table.runs tr[data-run]')].every(tr => tr._mark === 1)")
        assert same, "the list was re-rendered"
        reads = page.evaluate(
            """() => performance.getEntriesByType('resource').map(e => [new URL(e.name).pathname, e.startTime])
                 .filter(([p]) => p.startsWith('/api/v1/runs'))"""
        )
        paths = {path for path, _ in reads}
        assert paths <= {f"/api/v1/runs/{pid}", f"/api/v1/runs/{cid}"}, paths  # the changed rows, not the list
        starts = [t for path, t in reads if path == f"/api/v1/runs/{pid}"]
        assert 3 <= len(starts) <= 7, starts  # the set, the burst's updates (often one read for all), the delete
        assert all(b - a >= 240 for a, b in zip(starts, starts[1:])), starts  # at most one read per 250 ms
        assert _chips(page, fid) == [] and page.inner_text(f"{_row(fid)} td.param[data-param=batch_size]") == "64"
        page.screenshot(path=str(test_output / "mlflow-experiment.png"), full_page=False)
        assert console.errors == [], console.errors

        # --- an experiment id MLflow does not know: a message, not a blank page ---
        page.goto(f"{stack.api_url}/#/experiments/999")
        page.wait_for_selector("text=experiment 999 not found")
        assert page.text_content("#view .empty h2") == "Not found"
        # the browser reports the api's 404 as a failed resource; nothing else went wrong
        assert all("Failed to load resource" in e and "/api/2.0/mlflow/experiments/get" in e for e in console.errors), console.errors
    except Exception:
        print("console errors:", console.errors)
        page.screenshot(path=str(test_output / "mlflow-failure.png"), full_page=True)
        raise
    finally:
        context.close()
