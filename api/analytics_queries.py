"""Parameterised reads behind compare, leaderboard and aggregate (docs/analytics.md).

Every user value is bound as a query parameter; the only composed SQL comes from
the whitelists here and in `api.queries` (stat names, sort direction, scope).
Summaries come from metric_summaries (merged with `SUMMARY_SELECT`), never from
a scan of metric_points, so leaderboard and compare stay fast at 10,000 runs.
"""

from __future__ import annotations

import math
from typing import Any

from runstream.api.queries import SUMMARY_SELECT, SUMMARY_STATS, BadRequest, _scope, clean, run_row_to_json
from runstream.storage.schema import RUN_FIELDS
from runstream.storage.store import Store

MAX_COMPARE_RUNS = 1000
MAX_COMPARE_METRICS = 100
MAX_AGGREGATE_POINTS = 10_000
STAT_FIELDS = ("first", "last", "min", "max", "mean", "count", "last_step")


def split_csv(text: str | None) -> list[str]:
    """Comma-separated names, blanks dropped, first occurrence kept."""
    return list(dict.fromkeys(x.strip() for x in (text or "").split(",") if x.strip()))


def compare(store: Store, project: str | None, runs: list[str], metrics: list[str]) -> dict[str, Any]:
    if not runs or not metrics:
        raise BadRequest("both `runs` and `metrics` must name at least one item")
    if len(runs) > MAX_COMPARE_RUNS or len(metrics) > MAX_COMPARE_METRICS:
        raise BadRequest(f"at most {MAX_COMPARE_RUNS} runs and {MAX_COMPARE_METRICS} metrics per comparison")
    params: dict[str, Any] = {"runs": runs, "metrics": metrics}
    scope = _scope(project, params)
    info = {
        r["run_id"]: r
        for r in store.query_dicts(
            f"SELECT run_id, name, experiment, status FROM runs FINAL WHERE run_id IN {{runs:Array(String)}} AND {scope}", params
        )
    }
    rows = store.query_dicts(
        f"SELECT run_id, metric, {SUMMARY_SELECT} FROM metric_summaries "
        f"WHERE run_id IN {{runs:Array(String)}} AND metric IN {{metrics:Array(String)}} AND {scope} GROUP BY run_id, metric",
        params,
    )
    out: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in metrics}
    for r in rows:
        out[r["metric"]][r["run_id"]] = {k: clean(r[k]) for k in STAT_FIELDS}
    seen = set(info) | {r["run_id"] for r in rows}
    return {
        "runs": [
            {
                "id": run_id,
                "name": info[run_id]["name"] if run_id in info else None,
                "experiment": info[run_id]["experiment"] if run_id in info else None,
                "status": info[run_id]["status"] if run_id in info else None,
            }
            for run_id in runs
            if run_id in seen
        ],
        "metrics": out,
    }


def leaderboard(
    store: Store, project: str | None, metric: str, mode: str = "min", stat: str = "last", limit: int = 10, experiment: str | None = None
) -> dict[str, Any]:
    if mode not in ("min", "max"):
        raise BadRequest("mode must be min or max")
    if stat not in SUMMARY_STATS:
        raise BadRequest(f"stat must be one of {', '.join(SUMMARY_STATS)}")
    params: dict[str, Any] = {"metric": metric, "limit": limit}
    scope = _scope(project, params)
    run_filter = ""
    if experiment is not None:
        params["experiment"] = experiment
        # The run ids of one experiment come from the small runs table; the
        # summaries' primary key (project, run_id, metric) then prunes the scan.
        run_filter = f" AND (project, run_id) IN (SELECT project, run_id FROM runs FINAL WHERE experiment = {{experiment:String}} AND {scope})"
    direction = "ASC" if mode == "min" else "DESC"
    top = store.query_dicts(
        f"SELECT project, run_id, {stat} AS value FROM ("
        f"SELECT project, run_id, {SUMMARY_SELECT} FROM metric_summaries "
        f"WHERE metric = {{metric:String}} AND {scope}{run_filter} GROUP BY project, run_id) "
        f"WHERE value IS NOT NULL AND isFinite(value) ORDER BY value {direction}, run_id LIMIT {{limit:UInt32}}",
        params,
    )
    info: dict[tuple[str, str], dict[str, Any]] = {}
    if top:
        rows = store.query_dicts(
            f"SELECT {RUN_FIELDS} FROM runs FINAL WHERE run_id IN {{ids:Array(String)}} AND project IN {{projects:Array(String)}}",
            {"ids": [t["run_id"] for t in top], "projects": sorted({t["project"] for t in top})},
        )
        info = {(r["project"], r["run_id"]): run_row_to_json(r) for r in rows}
    ranked = []
    for rank, t in enumerate(top, start=1):
        run = info.get((t["project"], t["run_id"]), {})
        ranked.append(
            {
                "rank": rank,
                "id": t["run_id"],
                "name": run.get("name"),
                "experiment": run.get("experiment"),
                "status": run.get("status"),
                "value": clean(float(t["value"])),
                "tags": run.get("tags", {}),
                "params": run.get("params", {}),
            }
        )
    return {"metric": metric, "mode": mode, "stat": stat, "experiment": experiment, "runs": ranked}


def _group_key(group_by: str | None, params: dict[str, Any]) -> str:
    """SQL for a run's group from the whitelist tag.<key> | param.<key> | experiment | none."""
    if group_by is None or group_by in ("", "none"):
        return "''"
    if group_by == "experiment":
        return "experiment"
    kind, _, key = group_by.partition(".")
    if kind not in ("tag", "param") or not key:
        raise BadRequest("group_by must be tag.<key>, param.<key>, experiment or none")
    params["group_key"] = key
    return f"{'tags' if kind == 'tag' else 'params'}[{{group_key:String}}]"


def aggregate(
    store: Store,
    project: str | None,
    metric: str,
    *,
    experiment: str | None = None,
    group_by: str | None = None,
    runs: list[str] | None = None,
    max_points: int = 1000,
) -> dict[str, Any]:
    """Per group and step: mean, population std, min, max and count across runs.

    A group with more distinct steps than `max_points` is bucketed: bucket
    b = intDiv(step - first_step, width) with width = intDiv(last_step -
    first_step, max_points) + 1, so it has at most max_points buckets. Each run
    first contributes its own mean over the bucket (and its min and max); mean,
    std and count are then taken across runs as in the unbucketed case, min and
    max are the extremes of every point in the bucket, and the reported step is
    the bucket's smallest step. Without bucketing, a run with several points at
    one step contributes their mean.
    """
    if experiment is None and not runs:
        raise BadRequest("give `experiment` or `runs` (or both)")
    if not 1 <= max_points <= MAX_AGGREGATE_POINTS:
        raise BadRequest(f"max_points must be between 1 and {MAX_AGGREGATE_POINTS}")
    params: dict[str, Any] = {}
    key = _group_key(group_by, params)
    where = [_scope(project, params)]
    if experiment is not None:
        params["experiment"] = experiment
        where.append("experiment = {experiment:String}")
    if runs:
        if len(runs) > 100_000:
            raise BadRequest("at most 100000 runs")
        params["runs"] = runs
        where.append("run_id IN {runs:Array(String)}")
    members = store.query_rows(f"SELECT project, run_id, {key} AS key FROM runs FINAL WHERE {' AND '.join(where)}", params)
    if not members:
        return {"metric": metric, "group_by": group_by or "none", "experiment": experiment, "max_points": max_points, "groups": []}
    # Runs and their groups are bound as arrays (no join), numbered so that the
    # GROUP BYs below are on integers rather than strings; the filter on
    # (project, metric, run_id) is the prefix of metric_points' sort order.
    projects = sorted({p for p, _, _ in members})
    keys = sorted({k for _, _, k in members})
    group_no = {k: i + 1 for i, k in enumerate(keys)}
    single = len(projects) == 1
    pts_params: dict[str, Any] = {
        "metric": metric,
        "projects": projects,
        "run_ids": sorted({r for _, r, _ in members}),
        "ids": [r if single else f"{p}\x00{r}" for p, r, _ in members],
        "nums": list(range(1, len(members) + 1)),
        "run_group": [group_no[k] for _, _, k in members],
    }
    run_key = "run_id" if single else "concat(project, char(0), run_id)"
    points = (
        f"FROM (SELECT transform({run_key}, {{ids:Array(String)}}, {{nums:Array(UInt32)}}, toUInt32(0)) AS ri, "
        "if(ri = 0, 0, arrayElement({run_group:Array(UInt32)}, ri)) AS gi, step, value FROM metric_points "
        "WHERE project IN {projects:Array(String)} AND metric = {metric:String} AND run_id IN {run_ids:Array(String)} AND isFinite(value)) "
        "WHERE ri > 0"
    )
    bucket = "intDiv(step - arrayElement({first:Array(Int64)}, gi), arrayElement({width:Array(Int64)}, gi))"
    # Per run and bucket, then across runs per bucket; groupArray(cap) bounds
    # what a group that turns out to need bucketing sends back.
    sql = f"""
    SELECT gi, count() AS n_buckets,
           arraySort(groupArray({{cap:UInt32}})((b, s, mean, std, lo, hi, n))) AS buckets
    FROM (
        SELECT gi, b, min(s) AS s, avg(v) AS mean, stddevPop(v) AS std, min(lo) AS lo, max(hi) AS hi, count() AS n
        FROM (
            SELECT gi, ri, {bucket} AS b, min(step) AS s, avg(value) AS v, min(value) AS lo, max(value) AS hi
            {points} GROUP BY gi, ri, b
        ) GROUP BY gi, b
    ) GROUP BY gi ORDER BY gi
    """
    # Optimistic pass: one bucket per step. Only when a group has more steps
    # than max_points is its shape measured and the pass repeated with buckets.
    n_groups = len(keys)
    pts_params.update({"first": [0] * n_groups, "width": [1] * n_groups, "cap": max_points + 1})
    rows = store.query_rows(sql, pts_params)
    if any(int(n_buckets) > max_points for _, n_buckets, _ in rows):
        shape_sql = f"SELECT gi, min(step), max(step), uniqExact(step) {points} GROUP BY gi"
        width, first = [1] * n_groups, [0] * n_groups
        for g, lo, hi, n_steps in store.query_rows(shape_sql, pts_params):
            first[int(g) - 1] = int(lo)
            if int(n_steps) > max_points:
                width[int(g) - 1] = (int(hi) - int(lo)) // max_points + 1
        pts_params.update({"first": first, "width": width})
        rows = store.query_rows(sql, pts_params)
    # Runs per group with a finite point, from the summaries (a bitmap of run
    # numbers in the pass above cost a third of its time).
    finite = store.query_rows(
        f"SELECT project, run_id, mean FROM (SELECT project, run_id, {SUMMARY_SELECT} FROM metric_summaries "
        "WHERE project IN {projects:Array(String)} AND metric = {metric:String} AND run_id IN {run_ids:Array(String)} GROUP BY project, run_id)",
        pts_params,
    )
    group_of = {(p, r): group_no[k] for p, r, k in members}
    n_runs: dict[int, int] = {}
    for p, r, mean in finite:
        g = group_of.get((p, r))
        if g is not None and mean is not None and math.isfinite(mean):
            n_runs[g] = n_runs.get(g, 0) + 1
    groups = []
    for g, _, buckets in rows:
        groups.append(
            {
                "key": keys[int(g) - 1],
                "runs": n_runs.get(int(g), 0),
                "steps": [int(b[1]) for b in buckets],
                "mean": [clean(float(b[2])) for b in buckets],
                "std": [clean(float(b[3])) for b in buckets],
                "min": [clean(float(b[4])) for b in buckets],
                "max": [clean(float(b[5])) for b in buckets],
                "count": [int(b[6]) for b in buckets],
            }
        )
    return {"metric": metric, "group_by": group_by or "none", "experiment": experiment, "max_points": max_points, "groups": groups}
