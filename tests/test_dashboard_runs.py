"""The runs list in Chromium: param columns the user picks, server-side sort on a param,
filters in the api's language (params, metric values) that narrow the list and stay live,
a refused filter explained, parents that expand to their children, and rows grouped by a tag
with each group's count and mean/min/max (GET /api/v1/run-groups)."""

from __future__ import annotations

import statistics
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

ALPHAS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def _mse(alpha: float) -> float:
    return 3000 + 1000 * (alpha - 0.35) ** 2 * 10


def _row_ids(page: Any, selector: str = "table.runs:not(.nested) > tbody > tr[data-run]") -> list[str]:
    return list(page.eval_on_selector_all(selector, "rows => rows.map(r => r.dataset.run)"))


def test_runs_list_columns_filters_children_groups(stack: Stack, settings: Settings, chromium: Any, test_output: Path) -> None:
    exp_name = f"sweep-{uuid.uuid4().hex[:6]}"
    exp = Experiment(exp_name, settings=settings)
    runs = {}
    for i, alpha in enumerate(ALPHAS):
        r = exp.start_logging(name=f"alpha-{alpha}", tags={"model": "ridge" if i % 2 else "lasso"}, params={"alpha": alpha, "bs": 32 * (1 + i % 3)})
        for step in range(5):
            r.log("mse", _mse(alpha) + 50 * (4 - step), step=step)
        r.complete()
        runs[alpha] = r
    parent = exp.start_logging(name="cv-parent", tags={"model": "ridge"})
    kids = [parent.child_run(name=f"fold-{k}", params={"fold": k}) for k in range(2)]
    for k in kids:
        k.log("mse", 4000.0)
        k.complete()
    parent.complete()
    for r in [*runs.values(), parent, *kids]:
        r.flush(30)
    kids[-1].get_metrics()
    every = {r.id for r in runs.values()} | {parent.id} | {k.id for k in kids}

    # the api: a filter narrows, a group has its count and statistics, bad input is a 400
    api = httpx.Client(base_url=stack.api_url, timeout=30)
    listed = api.get("/api/v1/runs", params={"experiment": exp_name, "filter": "params.alpha >= 0.5", "limit": 100}).json()
    assert {r["id"] for r in listed["runs"]} == {runs[a].id for a in ALPHAS if a >= 0.5}
    both = api.get("/api/v1/runs", params=[("experiment", exp_name), ("filter", "params.alpha >= 0.5"), ("filter", "metric.mse < 3500")]).json()
    assert {r["id"] for r in both["runs"]} == {runs[a].id for a in ALPHAS if a >= 0.5 and _mse(a) < 3500}
    assert api.get("/api/v1/runs", params={"filter": "metric.mse < low"}).status_code == 400
    grouped = api.get("/api/v1/run-groups", params={"experiment": exp_name, "group_by": "tags.model", "metrics": "mse"}).json()
    by_key = {g["key"]: g for g in grouped["groups"]}
    ridge = [_mse(a) for i, a in enumerate(ALPHAS) if i % 2]
    assert by_key["ridge"]["count"] == len(ridge) + 1 and by_key["lasso"]["count"] == 4 and by_key[""]["count"] == 2
    assert by_key["ridge"]["metrics"]["mse"]["count"] == len(ridge)  # the parent logged no mse
    assert by_key["ridge"]["metrics"]["mse"]["mean"] == pytest.approx(statistics.mean(ridge))
    assert by_key["ridge"]["metrics"]["mse"]["min"] == pytest.approx(min(ridge))
    ordered = api.get("/api/v1/runs", params={"experiment": exp_name, "order_by": "-params.alpha", "limit": 3}).json()
    assert [r["params"]["alpha"] for r in ordered["runs"]] == ["0.8", "0.7", "0.6"]

    context = chromium.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    console = Console(page)
    try:
        page.goto(f"{stack.api_url}/#/?experiment={exp_name}&metrics=mse")
        page.wait_for_function(f"() => document.querySelectorAll('table.runs tbody tr[data-run]').length === {len(every)}")

        # param columns: the user adds alpha, the cells show each run's value; sort on it server-side
        page.fill("input[aria-label='add param column']", "alpha")
        page.press("input[aria-label='add param column']", "Enter")
        page.wait_for_selector("th[title='sort by param alpha']")
        page.click("th[title='sort by param alpha']")
        page.wait_for_function("() => location.hash.includes('order=params.alpha')")
        page.wait_for_selector("th[title='sort by param alpha'][aria-sort=ascending]")
        page.wait_for_function("() => document.querySelector('table.runs tbody tr[data-run] td.param')?.textContent === '0.1'")
        shown = page.eval_on_selector_all("table.runs tbody tr[data-run] td.param[data-param=alpha]", "cs => cs.map(c => c.textContent)")
        assert shown == [str(a) for a in ALPHAS] + ["", "", ""], shown  # runs without alpha last
        page.screenshot(path=str(test_output / "dashboard-runs-params.png"), full_page=False)

        # a filter narrows the list; a second one narrows it further; the URL keeps them
        page.fill("input[aria-label='filter runs']", "params.alpha >= 0.5")
        page.press("input[aria-label='filter runs']", "Enter")
        want = [runs[a].id for a in ALPHAS if a >= 0.5]
        page.wait_for_function(f"() => document.querySelectorAll('table.runs tbody tr[data-run]').length === {len(want)}")
        assert _row_ids(page) == want
        page.fill("input[aria-label='filter runs']", "metric.mse < 3500")
        page.press("input[aria-label='filter runs']", "Enter")
        narrower = [runs[a].id for a in ALPHAS if a >= 0.5 and _mse(a) < 3500]
        assert 0 < len(narrower) < len(want)
        page.wait_for_function(f"() => document.querySelectorAll('table.runs tbody tr[data-run]').length === {len(narrower)}")
        assert _row_ids(page) == narrower
        assert "filter=params.alpha" in page.evaluate("location.hash")

        # a filter the api refuses comes back to the input with its message; the list stays
        page.fill("input[aria-label='filter runs']", "metric.mse < low")
        page.press("input[aria-label='filter runs']", "Enter")
        page.wait_for_function("() => document.querySelector('.filter-error')?.textContent.includes('compares with a number')")
        assert page.input_value("input[aria-label='filter runs']") == "metric.mse < low"
        assert page.locator(".filter-chip").count() == 2
        assert _row_ids(page) == narrower
        page.screenshot(path=str(test_output / "dashboard-runs-filtered.png"), full_page=False)

        # live: a new run that matches the filters appears without a reload
        late = exp.start_logging(name="alpha-0.9", tags={"model": "ridge"}, params={"alpha": 0.9})
        late.log("mse", 3100.0)
        page.wait_for_selector(f'tr[data-run="{late.id}"]', timeout=30_000)
        late.fail("diverged")
        page.wait_for_selector(f'tr[data-run="{late.id}"] .badge.st-failed', timeout=30_000)
        page.click("button[aria-label='remove filter metric.mse < 3500']")
        page.click("button[aria-label='remove filter params.alpha >= 0.5']")
        page.wait_for_function(f"() => document.querySelectorAll('table.runs tbody tr[data-run]').length === {len(every) + 1}")

        # children under their parents: nested, the parent expands to its two folds
        page.check("input[aria-label='nest child runs']")
        page.wait_for_selector("button[aria-label='child runs of cv-parent']")
        ids = _row_ids(page)
        assert not {k.id for k in kids} & set(ids) and parent.id in ids
        page.click("button[aria-label='child runs of cv-parent']")
        page.wait_for_selector(f'tr.child-row[data-run="{kids[1].id}"]')
        ids = _row_ids(page)
        assert set(ids[ids.index(parent.id) + 1 : ids.index(parent.id) + 3]) == {kids[0].id, kids[1].id}  # right under the parent
        page.screenshot(path=str(test_output / "dashboard-runs-children.png"), full_page=False)
        page.uncheck("input[aria-label='nest child runs']")

        # group rows by a tag: counts and mean/min/max of mse; a group expands to its runs
        page.select_option("select[aria-label='group by']", "tags.model")
        page.wait_for_selector("table.groups tr.group[data-group=ridge]")
        ridge_live = ridge + [3100.0]
        assert page.inner_text("tr.group[data-group=ridge] td.count") == str(len(ridge_live) + 1)
        assert page.inner_text("tr.group[data-group=lasso] td.count") == "4"
        mean = float(page.inner_text("tr.group[data-group=ridge] td[data-metric=mse][data-agg=mean]"))
        assert mean == pytest.approx(statistics.mean(ridge_live), rel=1e-5)
        assert float(page.inner_text("tr.group[data-group=ridge] td[data-metric=mse][data-agg=max]")) == pytest.approx(max(ridge_live), rel=1e-5)
        page.click("button[aria-label='runs of tags.model lasso']")
        page.wait_for_function("() => document.querySelectorAll('table.runs.nested tr[data-run]').length === 4")
        assert set(_row_ids(page, "table.runs.nested tr[data-run]")) == {runs[a].id for i, a in enumerate(ALPHAS) if i % 2 == 0}
        # live: a new lasso run raises the group's count
        extra = exp.start_logging(name="lasso-late", tags={"model": "lasso"}, params={"alpha": 0.05})
        extra.log("mse", 5000.0)
        page.wait_for_function("() => document.querySelector('tr.group[data-group=lasso] td.count')?.textContent === '5'", timeout=30_000)
        extra.complete()
        page.screenshot(path=str(test_output / "dashboard-runs-groups.png"), full_page=True)
        # the refused filter's 400 is Chromium's "failed resource" line, expected once; nothing else
        errors = [e for e in console.errors if not ("status of 400" in e and "metric.mse+%3C+low" in e)]
        assert errors == [] and len(console.errors) == 1, console.errors
    except Exception:
        print("console errors:", console.errors)
        page.screenshot(path=str(test_output / "dashboard-runs-failure.png"), full_page=True)
        raise
    finally:
        context.close()
        api.close()
