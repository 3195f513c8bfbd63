"""Reads in MLflow's shapes, from ClickHouse: runs (info, data: latest metrics, params,
tags; inputs), search with MLflow's filter and order, and metric history.

Every statement binds its values (`{name:Type}`); the filter and order_by a client sends
are turned into SQL by `filters`, which composes only fixed text.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from runstream.api.mlflow import objects
from runstream.api.mlflow.filters import Condition, OrderKey, Params, condition_sql, order_sql
from runstream.api.mlflow.protocol import invalid, key_values, metric_json, not_found
from runstream.api.mlflow.status import to_mlflow
from runstream.storage.schema import RUN_FIELDS
from runstream.storage.store import Store

# Tags runstream keeps for MLflow's bookkeeping, never shown as tags.
LIFECYCLE_TAG = "runstream.mlflow.lifecycle"
# A deleted tag's value in rows stored before delete-tag removed the tag (a null value in a
# tags event, docs/events.md): still hidden from every answer so that older runs stay right.
DELETED_TAG_VALUE = "\x00deleted"
HIDDEN_TAGS = (LIFECYCLE_TAG,)

RUN_SELECT = ", ".join(f"r.{f.strip()} AS {f.strip()}" for f in RUN_FIELDS.split(","))


def _ms(dt: Any) -> int | None:
    return None if dt is None else int(round(dt.timestamp() * 1000))


def visible_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k not in HIDDEN_TAGS and v != DELETED_TAG_VALUE}


def artifact_uri(experiment_id: str, run_id: str) -> str:
    return f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"


def latest_metrics(store: Store, project: str, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """MLflow's latest_metrics: per run and metric the value at the highest step (then time, then value)."""
    if not run_ids:
        return {}
    rows = store.query_rows(
        "SELECT run_id, metric, argMax((value, toUnixTimestamp64Milli(ts), step), (step, ts, value)) FROM metric_points "
        "WHERE project = {project:String} AND run_id IN {runs:Array(String)} GROUP BY run_id, metric ORDER BY run_id, metric",
        {"project": project, "runs": run_ids},
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for run_id, metric, (value, ts, step) in rows:
        out.setdefault(run_id, []).append(metric_json(metric, value, int(ts), int(step)))
    return out


def run_inputs(store: Store, project: str, run_id: str) -> dict[str, Any]:
    inputs = objects.all_of(store, project, "run_input", parent_id=run_id)
    return {"dataset_inputs": inputs} if inputs else {}


def run_json(row: dict[str, Any], experiment_id: str, metrics: list[dict[str, Any]], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    tags = visible_tags(dict(row["tags"]))
    if row["name"]:
        tags.setdefault("mlflow.runName", row["name"])
    info: dict[str, Any] = {
        "run_id": row["run_id"],
        "run_uuid": row["run_id"],
        "run_name": row["name"],
        "experiment_id": experiment_id,
        "user_id": tags.get("mlflow.user", ""),
        "status": to_mlflow(row["status"]),
        "start_time": _ms(row["created_at"]),
        "artifact_uri": artifact_uri(experiment_id, row["run_id"]),
        "lifecycle_stage": "deleted" if dict(row["tags"]).get(LIFECYCLE_TAG) == "deleted" else "active",
    }
    end = _ms(row["ended_at"])
    if end is not None:
        info["end_time"] = end
    data = {"metrics": metrics, "params": key_values(dict(row["params"])), "tags": key_values(tags)}
    return {"info": info, "data": data, "inputs": inputs or {}}


class Experiments:
    """Experiment ids <-> the names runs are stored under, for one project and one request."""

    def __init__(self, store: Store, project: str) -> None:
        self.store, self.project = store, project
        self._all: list[dict[str, Any]] | None = None

    def all(self) -> list[dict[str, Any]]:
        if self._all is None:
            self._all = objects.experiments(self.store, self.project)
        return self._all

    def id_of(self, storage_name: str) -> str:
        # An experiment's id is derived from the name its runs are stored under (a rename
        # keeps both), so this needs no read.
        return objects.experiment_id_for(self.project, storage_name)

    def by_id(self, experiment_id: str) -> dict[str, Any]:
        for e in self.all():
            if e["experiment_id"] == str(experiment_id):
                return e
        raise not_found(f"No Experiment with id={experiment_id} exists")


def run_row(store: Store, project: str, run_id: str) -> dict[str, Any]:
    rows = store.query_dicts(
        f"SELECT {RUN_SELECT} FROM runs AS r FINAL WHERE r.project = {{project:String}} AND r.run_id = {{run:String}}",
        {"project": project, "run": run_id},
    )
    if not rows:
        raise not_found(f"Run with id={run_id} not found")
    return rows[0]


def get_run(store: Store, project: str, run_id: str) -> dict[str, Any]:
    row = run_row(store, project, run_id)
    experiment_id = Experiments(store, project).id_of(row["experiment"])
    metrics = latest_metrics(store, project, [run_id]).get(run_id, [])
    return run_json(row, experiment_id, metrics, run_inputs(store, project, run_id))


VIEW_TYPES = {"ACTIVE_ONLY": 1, "DELETED_ONLY": 2, "ALL": 3, 1: 1, 2: 2, 3: 3}


def view_type(value: Any) -> int:
    if value is None:
        return 1
    found = VIEW_TYPES.get(value.upper() if isinstance(value, str) else value)
    if found is None:
        raise invalid(f"Invalid view type {value!r}; expected ACTIVE_ONLY, DELETED_ONLY or ALL")
    return found


def page_token(offset: int) -> str:
    return base64.b64encode(orjson.dumps({"offset": offset})).decode()


def offset_of(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = orjson.loads(base64.b64decode(token, validate=True))["offset"]
        if not isinstance(offset, int) or offset < 0:
            raise ValueError
        return offset
    except Exception:
        raise invalid(f"Invalid page token {token!r}") from None


def search_runs(
    store: Store,
    project: str,
    experiment_ids: list[str],
    conditions: list[Condition],
    order: list[OrderKey],
    view: int,
    max_results: int,
    token: str | None,
) -> dict[str, Any]:
    exps = Experiments(store, project)
    names = [exps.by_id(e)["storage_name"] for e in experiment_ids]
    params: dict[str, Any] = {"project": project, "experiments": names, "lifecycle": LIFECYCLE_TAG}
    p = Params(params)
    where = ["r.project = {project:String}", "r.experiment IN {experiments:Array(String)}"]
    if view == 1:
        where.append("r.tags[{lifecycle:String}] != 'deleted'")
    elif view == 2:
        where.append("r.tags[{lifecycle:String}] = 'deleted'")
    where += [condition_sql(c, p, DELETED_TAG_VALUE) for c in conditions]
    joins, terms = order_sql(order, p, DELETED_TAG_VALUE)
    offset = offset_of(token)
    params["limit"], params["offset"] = max_results + 1, offset
    sql = (
        f"SELECT {RUN_SELECT} FROM (SELECT * FROM runs FINAL WHERE project = {{project:String}}) AS r {' '.join(joins)} "
        f"WHERE {' AND '.join(where)} ORDER BY {', '.join(terms)} LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}"
    )
    rows = store.query_dicts(sql, params, settings={"join_use_nulls": 1})
    more = len(rows) > max_results
    rows = rows[:max_results]
    metrics = latest_metrics(store, project, [r["run_id"] for r in rows])
    out: dict[str, Any] = {"runs": [run_json(r, exps.id_of(r["experiment"]), metrics.get(r["run_id"], [])) for r in rows]}
    if more:
        out["next_page_token"] = page_token(offset + max_results)
    return out


def metric_history(store: Store, project: str, run_id: str, key: str, max_results: int | None, token: str | None) -> dict[str, Any]:
    run_row(store, project, run_id)  # RESOURCE_DOES_NOT_EXIST for a run not in this project
    offset = offset_of(token)
    params: dict[str, Any] = {"project": project, "run": run_id, "metric": key, "offset": offset}
    limit = ""
    if max_results is not None:
        params["limit"] = max_results + 1
        limit = " LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
    elif offset:
        limit = " LIMIT 18446744073709551615 OFFSET {offset:UInt32}"
    rows = store.query_rows(
        "SELECT value, toUnixTimestamp64Milli(ts), step FROM metric_points "
        "WHERE project = {project:String} AND metric = {metric:String} AND run_id = {run:String} "
        "ORDER BY kafka_partition, kafka_offset, step, ts" + limit,
        params,
    )
    more = max_results is not None and len(rows) > max_results
    if more:
        rows = rows[: max_results or 0]
    out: dict[str, Any] = {"metrics": [metric_json(key, v, int(ts), int(step)) for v, ts, step in rows]}
    if more:
        out["next_page_token"] = page_token(offset + len(rows))
    return out
