"""MLflow's artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/...`) on runstream's
artifact store (api/artifacts.py), so `mlflow.log_artifact(s)`, `download_artifacts` and
logged models work against runstream.

A run's artifact_uri is `mlflow-artifacts:/<experiment>/<run>/artifacts`; the client
resolves it to this proxy on the tracking server. Paths are
    <experiment>/<run id>/artifacts/<path>            a run's file: stored as the run's file
                                                      and announced with a `file` event, so
                                                      the dashboard lists it like any upload
    <experiment>/models/<model id>/artifacts/<path>   a logged model's file
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from runstream.api.artifacts import LocalArtifactStore, safe_relpath
from runstream.api.mlflow import objects
from runstream.api.mlflow.context import Ctx, MlflowRoute, ctx, json_response
from runstream.api.mlflow.protocol import MlflowError, invalid, not_found
from runstream.api.mlflow.routes import existing_run

PREFIX = "/api/2.0/mlflow-artifacts/artifacts"
router = APIRouter(route_class=MlflowRoute, tags=["mlflow"])


async def _locate(c: Ctx, path: str) -> tuple[str, str, str, bool]:
    """(owner folder: run or model id, path inside it, the path's part before it, is a run's)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 4 and parts[1] == "models" and parts[3] == "artifacts":
        if await c.call(objects.get, "logged_model", parts[2]) is None:
            raise not_found(f"Logged model with ID '{parts[2]}' not found.")
        return parts[2], "/".join(parts[4:]), "/".join(parts[:4]), False
    if len(parts) >= 3 and parts[2] == "artifacts":
        await existing_run(c, parts[1])
        return parts[1], "/".join(parts[3:]), "/".join(parts[:3]), True
    raise invalid(f"Invalid artifact path {path!r}: expected <experiment>/<run>/artifacts/... or <experiment>/models/<model>/artifacts/...")


def _store(c: Ctx) -> LocalArtifactStore:
    store: LocalArtifactStore = c.request.app.state.artifacts
    return store


def _folder(c: Ctx, owner: str, rel: str) -> Path:
    if "/" in owner or owner in ("", ".", ".."):  # a run id is any name: never a way out of the folder
        raise invalid(f"invalid run or model id {owner!r}")
    base = _store(c).root / c.project / owner
    return base / safe_relpath(rel) if rel else base


@router.put(PREFIX + "/{path:path}")
async def upload(request: Request, path: str) -> Response:
    c = await ctx(request, json_body=False)
    owner, rel, _, is_run = await _locate(c, path)
    if not rel:
        raise invalid("an upload needs a file path after artifacts/")
    body = await request.body()
    limit = request.app.state.max_upload_bytes
    if len(body) > limit:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"file of {len(body)} bytes exceeds the {limit}-byte limit")
    try:
        meta = _store(c).put(c.project, owner, rel, body)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if is_run:
        fields: dict[str, Any] = {k: meta[k] for k in ("path", "file_kind", "size", "content_type", "uri", "sha256")}
        await c.writer.send([c.writer.event("file", owner, c.project, name=Path(rel).name, **fields)])
    return json_response({})


async def _existing_file(c: Ctx, path: str) -> Path:
    """The stored file an artifact path names; 404 when there is none."""
    owner, rel, _, _ = await _locate(c, path)
    try:
        target = _store(c).open_path(c.project, owner, rel) if rel else None
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if target is None:
        raise not_found(f"Artifact {path!r} not found")
    return target


@router.get(PREFIX + "/{path:path}")
async def download(request: Request, path: str) -> Response:
    target = await _existing_file(await ctx(request), path)
    return FileResponse(target, media_type=mimetypes.guess_type(target.name)[0] or "application/octet-stream")


@router.get(PREFIX)
async def list_artifacts(request: Request) -> Response:
    c = await ctx(request)
    path = str(c.body.get("path") or "")
    owner, rel, _, _ = await _locate(c, path)
    try:
        folder = _folder(c, owner, rel)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    files = []
    if folder.is_file():
        files.append({"path": folder.name, "is_dir": False, "file_size": folder.stat().st_size})
    elif folder.is_dir():
        for child in sorted(folder.iterdir()):
            if child.name.endswith(".part"):
                continue
            entry: dict[str, object] = {"path": child.name, "is_dir": child.is_dir()}
            if child.is_file():
                entry["file_size"] = child.stat().st_size
            files.append(entry)
    return json_response({"files": files})


@router.delete(PREFIX + "/{path:path}")
async def delete(request: Request, path: str) -> Response:
    target = await _existing_file(await ctx(request), path)
    target.unlink()
    return json_response({})
