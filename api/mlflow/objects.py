"""The MLflow objects runstream's schema has no table for: experiments (with their ids,
tags and lifecycle), logged models (MLflow 3's `log_model`) and run inputs (datasets).

They are control-plane records, a handful per experiment, written straight to one
ClickHouse table (`mlflow_objects`, migration 9; ReplacingMergeTree: the newest
version of an object wins, read with FINAL), so every api instance sees them at once.
Run data (metrics, params, tags, statuses) never goes here: it travels as wire events.

Experiment ids are derived from (project, name) (the first 15 hex digits of a SHA-256, as
a decimal string), so an experiment that exists only as runstream runs' `experiment`
column has the same id on every api instance; `Default` is MLflow's "0". A rename keeps
the id and the name the experiment's runs are stored under (`storage_name`).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from runstream.storage.store import Store

TABLE = "mlflow_objects"  # made by migration 9 (runstream/storage/schema.py)
DEFAULT_EXPERIMENT = "Default"
DEFAULT_EXPERIMENT_ID = "0"


def experiment_id_for(project: str, name: str) -> str:
    if name == DEFAULT_EXPERIMENT:
        return DEFAULT_EXPERIMENT_ID
    return str(int(hashlib.sha256(f"{project}\x00{name}".encode()).hexdigest()[:15], 16))


def now_ms() -> int:
    return int(time.time() * 1000)


def put(store: Store, project: str, kind: str, object_id: str, body: dict[str, Any], parent_id: str = "") -> None:
    store.insert_rows(
        TABLE,
        [(project, kind, object_id, parent_id, orjson.dumps(body).decode(), time.time_ns())],
        ("project", "kind", "object_id", "parent_id", "body", "version"),
    )


def get(store: Store, project: str, kind: str, object_id: str) -> dict[str, Any] | None:
    rows = store.query_rows(
        f"SELECT body FROM {TABLE} FINAL WHERE project = {{project:String}} AND kind = {{kind:String}} AND object_id = {{id:String}}",
        {"project": project, "kind": kind, "id": object_id},
    )
    return orjson.loads(rows[0][0]) if rows else None


def all_of(store: Store, project: str, kind: str, parent_id: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"project": project, "kind": kind}
    where = "project = {project:String} AND kind = {kind:String}"
    if parent_id is not None:
        params["parent"] = parent_id
        where += " AND parent_id = {parent:String}"
    rows = store.query_rows(f"SELECT body FROM {TABLE} FINAL WHERE {where} ORDER BY object_id", params)
    return [orjson.loads(r[0]) for r in rows]


# --- experiments ---


def _native_experiment(project: str, name: str, created: Any) -> dict[str, Any]:
    ms = int(created.timestamp() * 1000) if created is not None else 0
    return {
        "experiment_id": experiment_id_for(project, name),
        "name": name,
        "storage_name": name,
        "lifecycle_stage": "active",
        "creation_time": ms,
        "last_update_time": ms,
        "tags": {},
    }


def experiments(store: Store, project: str) -> list[dict[str, Any]]:
    """Every experiment of the project: the recorded ones, those that only runs name, and Default."""
    recorded = all_of(store, project, "experiment")
    stored_names = {e["storage_name"] for e in recorded}
    out = list(recorded)
    rows = store.query_rows(
        "SELECT experiment, min(created_at) FROM runs FINAL WHERE project = {project:String} GROUP BY experiment", {"project": project}
    )
    for name, created in rows:
        if name not in stored_names:
            out.append(_native_experiment(project, name, created))
            stored_names.add(name)
    if DEFAULT_EXPERIMENT not in stored_names:
        out.append(_native_experiment(project, DEFAULT_EXPERIMENT, None))
    return out


def experiment_by_id(store: Store, project: str, experiment_id: str) -> dict[str, Any] | None:
    found = get(store, project, "experiment", experiment_id)
    if found is not None:
        return found
    return next((e for e in experiments(store, project) if e["experiment_id"] == experiment_id), None)


def experiment_by_name(store: Store, project: str, name: str) -> dict[str, Any] | None:
    return next((e for e in experiments(store, project) if e["name"] == name), None)


def save_experiment(store: Store, project: str, experiment: dict[str, Any]) -> None:
    experiment["last_update_time"] = now_ms()
    put(store, project, "experiment", experiment["experiment_id"], experiment)
