"""Parameterised reads over the storage schema (docs/storage.md).

Every value a user supplies is bound as a ClickHouse query parameter; the
only text composed into SQL comes from fixed whitelists below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from runstream.api import run_filters
from runstream.errors import BadRequest, NotFound
from runstream.lifecycle import status_sql
from runstream.storage.schema import RUN_FIELDS
from runstream.storage.store import Store

ORDERABLE = {"created_at", "last_seen", "ended_at", "name", "status", "experiment", "run_id"}
SUMMARY_STATS = ("last", "min", "max", "mean", "count", "first")
SUMMARY_SELECT = (
    "sum(count_state) AS count, tupleElement(min(first_state), 2) AS first, tupleElement(max(last_state), 2) AS last, "
    "min(min_state) AS min, max(max_state) AS max, "
    "sum(sum_state) / sum(finite_state) AS mean, max(last_step) AS last_step"
)


def clean(x: Any) -> Any:
    """JSON-safe number: NaN and infinities become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _ts(x: Any) -> float | None:
    return None if x is None else x.timestamp()


def run_row_to_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["run_id"],
        "project": row["project"],
        "experiment": row["experiment"],
        "name": row["name"],
        "parent": row["parent_id"] or None,
        "status": row["status"],
        "error": row["error"] or None,
        "created_at": _ts(row["created_at"]),
        "ended_at": _ts(row["ended_at"]),
        "last_seen": _ts(row["last_seen"]),
        "tags": dict(row["tags"]),
        "params": dict(row["params"]),
        "meta": dict(row.get("meta") or {}),
    }


def shown_runs() -> str:
    """The runs table as readers see it: the status column is the shown one (Crashed
    derived by runstream.lifecycle), so filters, ordering and counts agree with it."""
    return f"(SELECT * REPLACE ({status_sql()} AS status) FROM runs FINAL)"


def _scope(project: str | None, params: dict[str, Any], column: str = "project") -> str:
    if project is None:
        return "1"
    params["project"] = project
    return f"{column} = {{project:String}}"


def get_run(store: Store, run_id: str, project: str | None) -> dict[str, Any]:
    run = run_state(store, run_id, project)
    run["children"] = [
        {"id": r["run_id"], "name": r["name"], "status": r["status"]}
        for r in store.query_dicts(
            f"SELECT run_id, name, status FROM {shown_runs()} WHERE parent_id = {{run:String}} AND project = {{project:String}} ORDER BY created_at",
            {"run": run_id, "project": run["project"]},
        )
    ]
    counts = store.query_dicts(
        "SELECT count() AS events, sum(points) AS points FROM ingested_events WHERE project = {project:String} AND run_id = {run:String}",
        {"run": run_id, "project": run["project"]},
    )[0]
    run["events"] = int(counts["events"])
    run["points"] = int(counts["points"] or 0)
    run["tables"] = [
        r[0]
        for r in store.query_rows(
            "SELECT DISTINCT table_name FROM table_cells WHERE project = {project:String} AND run_id = {run:String} ORDER BY table_name",
            {"run": run_id, "project": run["project"]},
        )
    ]
    return run


def run_state(store: Store, run_id: str, project: str | None) -> dict[str, Any]:
    """A run's row and metric summaries (what a live subscriber starts from)."""
    params: dict[str, Any] = {"run": run_id}
    rows = store.query_dicts(f"SELECT {RUN_FIELDS} FROM {shown_runs()} WHERE run_id = {{run:String}} AND {_scope(project, params)}", params)
    if not rows:
        # Points may arrive before (or without) a run_start event.
        count = store.query_rows(f"SELECT count() FROM ingested_events WHERE run_id = {{run:String}} AND {_scope(project, params)}", params)[0][0]
        if not count:
            raise NotFound(f"run {run_id!r} not found")
        raise NotFound(f"run {run_id!r} has events but no state yet")
    run = run_row_to_json(rows[0])
    run["descriptions"] = dict(rows[0]["descriptions"])
    run["metrics"] = metric_summaries(store, run_id, run["project"])
    return run


def metric_summaries(store: Store, run_id: str, project: str) -> dict[str, dict[str, Any]]:
    rows = store.query_dicts(
        f"SELECT metric, {SUMMARY_SELECT} FROM metric_summaries "
        "WHERE project = {project:String} AND run_id = {run:String} GROUP BY metric ORDER BY metric",
        {"run": run_id, "project": project},
    )
    return {r["metric"]: {k: clean(r[k]) for k in ("count", "first", "last", "min", "max", "mean", "last_step")} for r in rows}


def run_project(store: Store, run_id: str, project: str | None) -> str:
    params: dict[str, Any] = {"run": run_id}
    rows = store.query_rows(f"SELECT project FROM ingested_events WHERE run_id = {{run:String}} AND {_scope(project, params)} LIMIT 1", params)
    if not rows:
        rows = store.query_rows(f"SELECT project FROM runs FINAL WHERE run_id = {{run:String}} AND {_scope(project, params)} LIMIT 1", params)
    if not rows:
        raise NotFound(f"run {run_id!r} not found")
    return str(rows[0][0])


def get_metrics(store: Store, run_id: str, project: str | None) -> dict[str, Any]:
    """The get_metrics() form: scalar for a name logged once, list otherwise; tables as columns."""
    proj = run_project(store, run_id, project)
    params = {"run": run_id, "project": proj}
    out: dict[str, Any] = {}
    rows = store.query_rows(
        "SELECT metric, groupArray(value), groupArray(value_str) FROM "
        "(SELECT metric, value, value_str FROM metric_points WHERE project = {project:String} AND run_id = {run:String} "
        "ORDER BY metric, step, ts, kafka_offset) GROUP BY metric ORDER BY metric",
        params,
    )
    for metric, values, strs in rows:
        merged = [s if s else clean(v) for v, s in zip(values, strs)]
        out[metric] = merged[0] if len(merged) == 1 else merged
    for name, table in get_tables(store, run_id, proj).items():
        out[name] = table
    return out


def get_tables(store: Store, run_id: str, project: str, name: str | None = None) -> dict[str, dict[str, list[Any]]]:
    params: dict[str, Any] = {"run": run_id, "project": project}
    where = ""
    if name is not None:
        params["name"] = name
        where = " AND table_name = {name:String}"
    rows = store.query_rows(
        "SELECT table_name, column, groupArray(value), groupArray(value_str), min(ts) AS first_ts FROM "
        "(SELECT table_name, column, row, value, value_str, ts FROM table_cells WHERE project = {project:String} AND run_id = {run:String}"
        + where
        + " ORDER BY table_name, row) GROUP BY table_name, column ORDER BY table_name, first_ts, column",
        params,
    )
    tables: dict[str, dict[str, list[Any]]] = {}
    for table, column, values, strs, _ in rows:
        tables.setdefault(table, {})[column] = [s if s else clean(v) for v, s in zip(values, strs)]
    return tables


@dataclass
class Series:
    name: str
    steps: list[int]
    values: list[Any]
    timestamps: list[float]
    count: int
    downsampled: bool


def _step_range(params: dict[str, Any], from_step: int | None, to_step: int | None) -> str:
    """The WHERE clauses of an optional step range [from_step, to_step], bound into params."""
    clause = ""
    if from_step is not None:
        params["from"] = from_step
        clause += " AND step >= {from:Int64}"
    if to_step is not None:
        params["to"] = to_step
        clause += " AND step <= {to:Int64}"
    return clause


def get_series(
    store: Store, run_id: str, project: str | None, name: str, max_points: int | None, from_step: int | None, to_step: int | None
) -> Series:
    proj = run_project(store, run_id, project)
    params: dict[str, Any] = {"run": run_id, "project": proj, "metric": name}
    where = "project = {project:String} AND run_id = {run:String} AND metric = {metric:String}" + _step_range(params, from_step, to_step)
    count = int(store.query_rows(f"SELECT count() FROM metric_points WHERE {where}", params)[0][0])
    if count == 0:
        exists = store.query_rows(
            "SELECT 1 FROM metric_summaries WHERE project = {project:String} AND run_id = {run:String} AND metric = {metric:String} LIMIT 1",
            params,
        )
        if not exists:
            raise NotFound(f"metric {name!r} not found in run {run_id!r}")
    if max_points is not None and count > max_points:
        params["n"] = max(3, int(max_points))
        # Shape-preserving downsampling in the engine (largest triangle three buckets).
        rows = store.query_rows(
            f"SELECT arrayJoin(largestTriangleThreeBuckets({{n:UInt64}})(toFloat64(step), value)) AS p FROM "
            f"(SELECT step, value FROM metric_points WHERE {where} AND isFinite(value) ORDER BY step)",
            params,
        )
        steps = [int(p[0][0]) for p in rows]
        values = [clean(p[0][1]) for p in rows]
        # The kept points' times (the first point at each kept step), so a chart can put time on x.
        params["kept"] = steps
        first_ts = dict(
            store.query_rows(
                f"SELECT step, toUnixTimestamp64Milli(min(ts)) FROM metric_points WHERE {where} AND step IN {{kept:Array(Int64)}} GROUP BY step",
                params,
            )
        )
        timestamps = [first_ts.get(s, 0) / 1000.0 for s in steps]
        return Series(name, steps, values, timestamps, count, True)
    rows = store.query_rows(f"SELECT step, value, value_str, toUnixTimestamp64Milli(ts) FROM metric_points WHERE {where} ORDER BY step, ts", params)
    return Series(
        name,
        [r[0] for r in rows],
        [r[2] if r[2] else clean(r[1]) for r in rows],
        [r[3] / 1000.0 for r in rows],
        count,
        False,
    )


MAX_SERIES_RUNS = 200


def get_series_many(
    store: Store, project: str | None, run_ids: list[str], name: str, max_points: int, from_step: int | None = None, to_step: int | None = None
) -> dict[str, Any]:
    """One metric of many runs in one read (the compare page): each run's numeric points in
    [from_step, to_step] (both optional), downsampled in the engine to at most max_points
    (largest triangle three buckets)."""
    if not run_ids:
        raise BadRequest("give runs")
    if len(run_ids) > MAX_SERIES_RUNS:
        raise BadRequest(f"at most {MAX_SERIES_RUNS} runs per request")
    params: dict[str, Any] = {"runs": run_ids, "metric": name, "n": max(3, int(max_points))}
    steps = _step_range(params, from_step, to_step)
    rows = store.query_rows(
        "SELECT run_id, count() AS n, largestTriangleThreeBuckets({n:UInt64})(toFloat64(step), value) AS pts FROM "
        f"(SELECT run_id, step, value FROM metric_points WHERE {_scope(project, params)} AND metric = {{metric:String}} "
        f"AND run_id IN {{runs:Array(String)}}{steps} AND isFinite(value)) GROUP BY run_id",
        params,
    )
    out = {}
    for run_id, n, pts in rows:
        out[run_id] = {"steps": [int(p[0]) for p in pts], "values": [clean(p[1]) for p in pts], "count": int(n), "downsampled": int(n) > len(pts)}
    return {"metric": name, "max_points": params["n"], "runs": out}


def list_experiments(store: Store, project: str | None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {}
    rows = store.query_dicts(
        "SELECT project, experiment, count() AS runs, countIf(status = 'Running') AS running, "
        "max(last_seen) AS last_activity, min(created_at) AS created_at "
        f"FROM {shown_runs()} WHERE {_scope(project, params)} GROUP BY project, experiment ORDER BY last_activity DESC",
        params,
    )
    return [
        {
            "project": r["project"],
            "name": r["experiment"],
            "runs": int(r["runs"]),
            "running": int(r["running"]),
            "last_activity": _ts(r["last_activity"]),
            "created_at": _ts(r["created_at"]),
        }
        for r in rows
    ]


def list_runs(
    store: Store,
    project: str | None,
    *,
    experiment: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    parent: str | None = None,
    order_by: str = "-created_at",
    limit: int = 100,
    offset: int = 0,
    metrics: list[str] | None = None,
    compute: str | None = None,
    meta: list[str] | None = None,
    filters: list[str] | None = None,
    with_children: bool = False,
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    where = _runs_where(project, params, experiment, status, tag, parent, compute, meta, filters)
    desc = order_by.startswith("-")
    key = order_by.lstrip("-+")
    join = ""
    if key.startswith("metric."):
        metric, _, stat = key[len("metric.") :].partition(":")
        stat = stat or "last"
        if stat not in SUMMARY_STATS:
            raise BadRequest(f"order_by statistic must be one of {', '.join(SUMMARY_STATS)}")
        params["order_metric"] = metric
        join = (
            f" LEFT JOIN (SELECT project, run_id, {SUMMARY_SELECT} FROM metric_summaries "
            "WHERE metric = {order_metric:String} GROUP BY project, run_id) AS o ON o.project = r.project AND o.run_id = r.run_id"
        )
        where.append("o.run_id != ''")
        order = f"o.{stat} {'DESC' if desc else 'ASC'}, r.run_id"
    elif key in ORDERABLE:
        order = f"r.{key} {'DESC' if desc else 'ASC'}, r.run_id"
    elif key == "duration":
        order = f"dateDiff('millisecond', r.created_at, ifNull(r.ended_at, now64(3))) {'DESC' if desc else 'ASC'}, r.run_id"
    elif (terms := run_filters.order_key(key, params)) is not None:
        # A param or tag column: numbers by value, text after them; runs without the key last.
        d = "DESC" if desc else "ASC"
        order = f"{terms[0]} {d} NULLS LAST, {terms[1]} = '' ASC, {terms[1]} {d}, r.run_id"
    else:
        raise BadRequest(
            f"order_by must be one of {', '.join(sorted(ORDERABLE))}, duration, metric.<name>[:stat], params.<key> or tags.<key>, "
            "optionally prefixed by '-'"
        )

    fields = ", ".join(f"r.{f.strip()} AS {f.strip()}" for f in RUN_FIELDS.split(","))
    base = f"FROM {shown_runs()} AS r{join} WHERE {' AND '.join(where)}"
    total = int(store.query_rows(f"SELECT count() {base}", params)[0][0])
    rows = store.query_dicts(f"SELECT {fields} {base} ORDER BY {order} LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}", params)
    runs = [run_row_to_json(r) for r in rows]
    if metrics and runs:
        summaries = summaries_for(store, [(r["project"], r["id"]) for r in runs], metrics)
        for r in runs:
            r["metrics"] = summaries.get(r["id"], {})
    if with_children and runs:
        # How many child runs each listed run has (the list expands a parent to them).
        children = dict(
            store.query_rows(
                f"SELECT parent_id, count() FROM {shown_runs()} WHERE parent_id IN {{ids:Array(String)}} "
                "AND project IN {projects:Array(String)} GROUP BY parent_id",
                {"ids": [r["id"] for r in runs], "projects": sorted({r["project"] for r in runs})},
            )
        )
        for r in runs:
            r["children"] = int(children.get(r["id"], 0))
    return {"total": total, "limit": limit, "offset": offset, "runs": runs}


def list_run_groups(
    store: Store,
    project: str | None,
    group_by: str,
    *,
    metrics: list[str] | None = None,
    stat: str = "last",
    experiment: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    parent: str | None = None,
    compute: str | None = None,
    meta: list[str] | None = None,
    filters: list[str] | None = None,
    limit: int = 1000,
) -> dict[str, Any]:
    """The filtered runs grouped by a tag, a param, the experiment or the status: each group's
    run count and the mean, min and max across its runs of each metric's `stat` (last by default)."""
    if stat not in run_filters.STAT_SQL:
        raise BadRequest(f"stat must be one of {', '.join(run_filters.STAT_SQL)}")
    params: dict[str, Any] = {"limit": limit}
    where = _runs_where(project, params, experiment, status, tag, parent, compute, meta, filters)
    key = run_filters.group_key(group_by, params)
    members = f"SELECT r.project AS project, r.run_id AS run_id, {key} AS key FROM {shown_runs()} AS r WHERE {' AND '.join(where)}"
    rows = store.query_rows(
        f"SELECT key, count() AS n FROM ({members}) GROUP BY key ORDER BY toFloat64OrNull(key) ASC NULLS LAST, key ASC LIMIT {{limit:UInt32}}",
        params,
    )
    groups = [{"key": k, "count": int(n), "metrics": {}} for k, n in rows]
    by_key = {g["key"]: g for g in groups}
    if metrics and groups:
        params["group_metrics"] = metrics
        stats = store.query_rows(
            f"SELECT g.key, s.metric, avg(s.v), min(s.v), max(s.v), count() FROM ({members}) AS g "
            f"INNER JOIN (SELECT project, run_id, metric, {run_filters.STAT_SQL[stat]} AS v FROM metric_summaries "
            "WHERE metric IN {group_metrics:Array(String)} GROUP BY project, run_id, metric) AS s "
            "ON s.project = g.project AND s.run_id = g.run_id WHERE isFinite(s.v) GROUP BY g.key, s.metric",
            params,
        )
        for k, metric, mean, lo, hi, n in stats:
            if k in by_key:
                by_key[k]["metrics"][metric] = {"mean": clean(mean), "min": clean(lo), "max": clean(hi), "count": int(n)}
    total = sum(g["count"] for g in groups)
    return {"group_by": group_by, "stat": stat, "total": total, "groups": groups}


def _runs_where(
    project: str | None,
    params: dict[str, Any],
    experiment: str | None,
    status: str | None,
    tag: str | None,
    parent: str | None,
    compute: str | None,
    meta: list[str] | None,
    conditions: list[str] | None,
) -> list[str]:
    """The runs list's WHERE over the shown runs aliased r: fixed fragments, every value a parameter."""
    where = [_scope(project, params, "r.project")]
    if experiment is not None:
        params["experiment"] = experiment
        where.append("r.experiment = {experiment:String}")
    if status is not None:
        params["statuses"] = [s for s in status.split(",") if s]
        where.append("r.status IN {statuses:Array(String)}")
    if tag is not None:
        key, sep, value = tag.partition("=")
        params["tag_key"] = key
        if sep:
            params["tag_value"] = value
            where.append("r.tags[{tag_key:String}] = {tag_value:String}")
        else:
            where.append("mapContains(r.tags, {tag_key:String})")
    if parent is not None:
        params["parent"] = "" if parent in ("", "none", "null") else parent
        where.append("r.parent_id = {parent:String}")
    # Where runs execute (ingest/metadata.py): compute=<target>, meta=key or key=value (repeatable).
    filters = [f"compute={compute}"] if compute is not None else []
    for i, item in enumerate(filters + list(meta or ())):
        key, sep, value = item.partition("=")
        params[f"meta_key{i}"] = key
        if sep:
            params[f"meta_value{i}"] = value
            where.append(f"r.meta[{{meta_key{i}:String}}] = {{meta_value{i}:String}}")
        else:
            where.append(f"mapContains(r.meta, {{meta_key{i}:String}})")
    # The filter language (metric.mse < 3400, params.alpha >= 0.5, ...): api/run_filters.py.
    where.extend(run_filters.to_sql(run_filters.parse_all(conditions), params))
    return where


def summaries_for(store: Store, runs: list[tuple[str, str]], metrics: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    rows = store.query_dicts(
        f"SELECT run_id, metric, {SUMMARY_SELECT} FROM metric_summaries "
        "WHERE run_id IN {runs:Array(String)} AND metric IN {metrics:Array(String)} AND project IN {projects:Array(String)} "
        "GROUP BY run_id, metric",
        {"runs": [r for _, r in runs], "metrics": metrics, "projects": sorted({p for p, _ in runs})},
    )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["run_id"], {})[r["metric"]] = {k: clean(r[k]) for k in ("count", "first", "last", "min", "max", "mean", "last_step")}
    return out


def get_logs(store: Store, run_id: str, project: str | None, since: float, limit: int) -> dict[str, Any]:
    proj = run_project(store, run_id, project)
    rows = store.query_rows(
        "SELECT toUnixTimestamp64Micro(ts), stream, line FROM run_logs WHERE project = {project:String} AND run_id = {run:String} "
        "AND ts > fromUnixTimestamp64Micro({since:Int64}) ORDER BY ts, kafka_offset, idx LIMIT {limit:UInt32}",
        {"project": proj, "run": run_id, "since": int(round(since * 1e6)), "limit": limit},
    )
    lines = [{"ts": r[0] / 1e6, "stream": r[1], "line": r[2]} for r in rows]
    return {"lines": lines, "next_since": lines[-1]["ts"] if lines else since}


def get_files(store: Store, run_id: str, project: str | None) -> list[dict[str, Any]]:
    proj = run_project(store, run_id, project)
    rows = store.query_dicts(
        "SELECT path, file_kind, name, size, content_type, sha256, ts FROM run_files FINAL "
        "WHERE project = {project:String} AND run_id = {run:String} ORDER BY path",
        {"project": proj, "run": run_id},
    )
    return [
        {
            "path": r["path"],
            "kind": r["file_kind"],
            "name": r["name"],
            "size": int(r["size"]),
            "content_type": r["content_type"],
            "sha256": r["sha256"],
            "ts": _ts(r["ts"]),
        }
        for r in rows
    ]
