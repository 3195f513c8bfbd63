"""MLflow 3's logged models (`/api/2.0/mlflow/logged-models`): what `mlflow.<flavor>.log_model`
and autologging create before uploading a model's files. A model is an `objects` record;
its files go through the artifact proxy under `<experiment>/models/<model id>/artifacts`.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response

from runstream.api.mlflow import objects
from runstream.api.mlflow.context import Ctx, MlflowRoute, ctx, json_response
from runstream.api.mlflow.protocol import invalid, key_values, not_found, text

PREFIX = "/api/2.0/mlflow/logged-models"
STATUSES = ("LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED")
router = APIRouter(route_class=MlflowRoute, tags=["mlflow"])
_MODEL_COND = re.compile(
    r"(?:attributes?\.)?(?P<key>name|model_id|source_run_id|model_type|status)\s*(?P<op>!=|=)\s*'(?P<value>(?:[^']|'')*)'", re.IGNORECASE
)


def _pairs(items: Any, what: str) -> dict[str, str]:
    if not items:
        return {}
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("key"), str) for i in items):
        raise invalid(f"'{what}' must be a list of {{key, value}}")
    return {i["key"]: "" if i.get("value") is None else str(i["value"]) for i in items}


def model_json(m: dict[str, Any]) -> dict[str, Any]:
    info = {k: m[k] for k in ("model_id", "experiment_id", "name", "creation_timestamp_ms", "last_updated_timestamp_ms", "artifact_uri", "status")}
    for k in ("model_type", "source_run_id", "status_message"):
        if m.get(k):
            info[k] = m[k]
    info["tags"] = key_values(m.get("tags", {}))
    return {"info": info, "data": {"params": key_values(m.get("params", {})), "metrics": []}}


async def _model(c: Ctx, model_id: str) -> dict[str, Any]:
    found = await c.call(objects.get, "logged_model", model_id)
    if found is None or found.get("deleted"):
        raise not_found(f"Logged model with ID '{model_id}' not found.")
    return dict(found)


async def _save(c: Ctx, m: dict[str, Any]) -> None:
    m["last_updated_timestamp_ms"] = objects.now_ms()
    await c.call(objects.put, "logged_model", m["model_id"], m, m.get("experiment_id", ""))


@router.post(PREFIX)
async def create_logged_model(request: Request) -> Response:
    c = await ctx(request)
    experiment_id = str(text(c.body, "experiment_id", required=True))
    if await c.call(objects.experiment_by_id, experiment_id) is None:
        raise not_found(f"No Experiment with id={experiment_id} exists")
    model_id = f"m-{uuid.uuid4().hex}"
    now = objects.now_ms()
    m = {
        "model_id": model_id,
        "experiment_id": experiment_id,
        "name": text(c.body, "name") or model_id,
        "creation_timestamp_ms": now,
        "last_updated_timestamp_ms": now,
        "artifact_uri": f"mlflow-artifacts:/{experiment_id}/models/{model_id}/artifacts",
        "status": "LOGGED_MODEL_PENDING",
        "model_type": text(c.body, "model_type") or "",
        "source_run_id": text(c.body, "source_run_id") or "",
        "params": _pairs(c.body.get("params"), "params"),
        "tags": _pairs(c.body.get("tags"), "tags"),
    }
    await _save(c, m)
    return json_response({"model": model_json(m)})


@router.get(PREFIX + "/{model_id}")
async def get_logged_model(request: Request, model_id: str) -> Response:
    c = await ctx(request)
    return json_response({"model": model_json(await _model(c, model_id))})


@router.patch(PREFIX + "/{model_id}")
async def finalize_logged_model(request: Request, model_id: str) -> Response:
    c = await ctx(request)
    m = await _model(c, model_id)
    status = c.body.get("status")
    if isinstance(status, int):
        status = {1: STATUSES[0], 2: STATUSES[1], 3: STATUSES[2]}.get(status)
    if status not in STATUSES:
        raise invalid(f"Invalid logged model status {c.body.get('status')!r}")
    m["status"] = status
    await _save(c, m)
    return json_response({"model": model_json(m)})


@router.patch(PREFIX + "/{model_id}/tags")
async def set_logged_model_tags(request: Request, model_id: str) -> Response:
    c = await ctx(request)
    m = await _model(c, model_id)
    m.setdefault("tags", {}).update(_pairs(c.body.get("tags"), "tags"))
    await _save(c, m)
    return json_response({"model": model_json(m)})


@router.delete(PREFIX + "/{model_id}/tags/{tag_key:path}")
async def delete_logged_model_tag(request: Request, model_id: str, tag_key: str) -> Response:
    c = await ctx(request)
    m = await _model(c, model_id)
    if m.get("tags", {}).pop(tag_key, None) is None:
        raise not_found(f"No tag with key {tag_key!r} on logged model {model_id}")
    await _save(c, m)
    return json_response({})


@router.post(PREFIX + "/{model_id}/params")
async def log_logged_model_params(request: Request, model_id: str) -> Response:
    c = await ctx(request)
    m = await _model(c, model_id)
    m.setdefault("params", {}).update(_pairs(c.body.get("params"), "params"))
    await _save(c, m)
    return json_response({})


@router.delete(PREFIX + "/{model_id}")
async def delete_logged_model(request: Request, model_id: str) -> Response:
    c = await ctx(request)
    m = await _model(c, model_id)
    m["deleted"] = True
    await _save(c, m)
    return json_response({})


@router.post(PREFIX + "/search")
async def search_logged_models(request: Request) -> Response:
    """The models of the given experiments, newest first, in one page; the filter may compare
    name, model_id, source_run_id, model_type or status with = or != (joined by AND)."""
    c = await ctx(request)
    wanted = {str(e) for e in c.body.get("experiment_ids") or []}
    conditions = []
    for clause in re.split(r"\s+AND\s+", str(c.body.get("filter") or "").strip(), flags=re.IGNORECASE):
        if not clause:
            continue
        m = _MODEL_COND.fullmatch(clause.strip())
        if m is None:
            raise invalid(
                f"Invalid logged model filter {clause!r}: runstream supports <name|model_id|source_run_id|model_type|status> = or != 'value'"
            )
        conditions.append((m.group("key"), m.group("op"), m.group("value").replace("''", "'")))

    def keep(m: dict[str, Any]) -> bool:
        return all((str(m.get(key, "")) == value) == (op == "=") for key, op, value in conditions)

    found = [
        m for m in await c.call(objects.all_of, "logged_model") if not m.get("deleted") and (not wanted or m["experiment_id"] in wanted) and keep(m)
    ]
    found.sort(key=lambda m: m["creation_timestamp_ms"], reverse=True)
    return json_response({"models": [model_json(m) for m in found]})
