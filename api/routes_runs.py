"""Run, experiment, series, table, log and file endpoints."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from runstream.api import queries
from runstream.api.artifacts import LocalArtifactStore, safe_relpath
from runstream.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from runstream.storage.store import Store

router = APIRouter(prefix="/api/v1", tags=["runs"])
FILTER_HELP = "conditions joined by 'and': metric.mse < 3400, params.alpha >= 0.5, tags.model = ridge, status != Failed; repeatable"


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


async def _call(request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    # An ApiError (NotFound, BadRequest) raised by the query answers with its status (api.app).
    return await _store(request).call(fn, _store(request), *args, **kwargs)


@router.get("/experiments")
async def experiments(request: Request) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await _call(request, queries.list_experiments, request.state.project)
    return result


@router.get("/runs")
async def runs(
    request: Request,
    experiment: str | None = None,
    status: str | None = Query(None, description="comma-separated statuses"),
    tag: str | None = Query(None, description="'key' or 'key=value'"),
    parent: str | None = Query(None, description="parent run id; 'none' for top-level runs"),
    order_by: str = Query(
        "-created_at",
        description="created_at, last_seen, name, status, duration, ..., metric.<name>[:last|min|max|mean|count], params.<key> or tags.<key>; "
        "'-' for descending",
    ),
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
    metrics: str | None = Query(None, description="comma-separated metric names whose summaries to include"),
    compute: str | None = Query(None, description="compute target the runs report (RUNSTREAM_COMPUTE)"),
    meta: list[str] | None = Query(None, description="run metadata 'key' or 'key=value' (host, user, git_commit, git_branch, ...); repeatable"),
    filter: list[str] | None = Query(None, description=FILTER_HELP),
    children: bool = Query(False, description="include each run's number of child runs"),
) -> dict[str, Any]:
    result: dict[str, Any] = await _call(
        request,
        queries.list_runs,
        request.state.project,
        experiment=experiment,
        status=status,
        tag=tag,
        parent=parent,
        order_by=order_by,
        limit=limit,
        offset=offset,
        metrics=[m for m in (metrics or "").split(",") if m],
        compute=compute,
        meta=meta,
        filters=filter,
        with_children=children,
    )
    return result


@router.get("/run-groups")
async def run_groups(
    request: Request,
    group_by: str = Query(..., description="tags.<key>, params.<key>, experiment or status"),
    metrics: str | None = Query(None, description="comma-separated metrics: per group the mean, min and max of each run's `stat`"),
    stat: str = Query("last", description="last, first, min, max, mean or count"),
    experiment: str | None = None,
    status: str | None = Query(None, description="comma-separated statuses"),
    tag: str | None = Query(None, description="'key' or 'key=value'"),
    parent: str | None = Query(None, description="parent run id; 'none' for top-level runs"),
    compute: str | None = None,
    meta: list[str] | None = Query(None),
    filter: list[str] | None = Query(None, description=FILTER_HELP),
    limit: int = Query(1000, ge=1, le=10_000),
) -> dict[str, Any]:
    """The runs of /runs's filters grouped by a tag or param, with each group's count and metric statistics."""
    result: dict[str, Any] = await _call(
        request,
        queries.list_run_groups,
        request.state.project,
        group_by,
        metrics=[m for m in (metrics or "").split(",") if m],
        stat=stat,
        experiment=experiment,
        status=status,
        tag=tag,
        parent=parent,
        compute=compute,
        meta=meta,
        filters=filter,
        limit=limit,
    )
    return result


@router.get("/series")
async def series_of_runs(
    request: Request,
    metric: str,
    runs: str = Query(..., description=f"comma-separated run ids (at most {queries.MAX_SERIES_RUNS})"),
    max_points: int = Query(500, ge=3, le=100_000),
    from_step: int | None = None,
    to_step: int | None = None,
) -> dict[str, Any]:
    """One metric of many runs in one read: each run's numeric points (in [from_step, to_step]), downsampled to max_points."""
    ids = [r for r in runs.split(",") if r]
    result: dict[str, Any] = await _call(request, queries.get_series_many, request.state.project, ids, metric, max_points, from_step, to_step)
    return result


@router.get("/runs/{run_id}")
async def run(request: Request, run_id: str) -> dict[str, Any]:
    result: dict[str, Any] = await _call(request, queries.get_run, run_id, request.state.project)
    return result


@router.get("/runs/{run_id}/metrics")
async def run_metrics(request: Request, run_id: str) -> dict[str, Any]:
    result: dict[str, Any] = await _call(request, queries.get_metrics, run_id, request.state.project)
    return result


@router.get("/runs/{run_id}/metrics/{name:path}")
async def run_series(
    request: Request,
    run_id: str,
    name: str,
    max_points: int | None = Query(None, ge=3, le=1_000_000),
    from_step: int | None = None,
    to_step: int | None = None,
) -> dict[str, Any]:
    series: queries.Series = await _call(request, queries.get_series, run_id, request.state.project, name, max_points, from_step, to_step)
    return {
        "run": run_id,
        "name": series.name,
        "steps": series.steps,
        "values": series.values,
        "timestamps": series.timestamps,
        "count": series.count,
        "downsampled": series.downsampled,
    }


@router.get("/runs/{run_id}/tables/{name:path}")
async def run_table(request: Request, run_id: str, name: str) -> dict[str, Any]:
    def fetch(store: Store, run_id: str, project: str | None, name: str) -> dict[str, Any]:
        proj = queries.run_project(store, run_id, project)
        tables = queries.get_tables(store, run_id, proj, name)
        if name not in tables:
            raise NotFound(f"table {name!r} not found in run {run_id!r}")
        columns = tables[name]
        return {"run": run_id, "name": name, "columns": columns, "rows": max((len(v) for v in columns.values()), default=0)}

    result: dict[str, Any] = await _call(request, fetch, run_id, request.state.project, name)
    return result


@router.get("/runs/{run_id}/logs")
async def run_logs(request: Request, run_id: str, since: float = 0.0, limit: int = Query(1000, ge=1, le=100_000)) -> dict[str, Any]:
    result: dict[str, Any] = await _call(request, queries.get_logs, run_id, request.state.project, since, limit)
    return result


@router.get("/runs/{run_id}/files")
async def run_files(request: Request, run_id: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await _call(request, queries.get_files, run_id, request.state.project)
    return result


@router.get("/runs/{run_id}/files/{path:path}")
async def run_file(request: Request, run_id: str, path: str) -> FileResponse:
    project: str = await _call(request, queries.run_project, run_id, request.state.project)
    artifacts: LocalArtifactStore = request.app.state.artifacts
    try:
        target = artifacts.open_path(project, run_id, path)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if target is None:
        raise NotFound(f"file {path!r} not found in run {run_id!r}")
    return FileResponse(target)


@router.put("/runs/{run_id}/files/{path:path}", tags=["ingest"])
async def upload_file(request: Request, run_id: str, path: str, project: str | None = None) -> dict[str, Any]:
    scope = request.state.project
    if scope is not None and project not in (None, scope):
        raise Forbidden(f"this API key may only write to project {scope!r}")
    artifacts: LocalArtifactStore = request.app.state.artifacts
    limit = request.app.state.max_upload_bytes
    try:
        safe_relpath(path)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    # Streamed to disk as it arrives: a large file never sits in the api's memory.
    staged = artifacts.staging_path()
    size, digest = 0, hashlib.sha256()
    try:
        with open(staged, "wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"file of more than {limit} bytes exceeds the {limit}-byte limit")
                digest.update(chunk)
                out.write(chunk)
        try:
            return artifacts.put_file(scope or project or request.app.state.settings.project, run_id, path, staged, size, digest.hexdigest())
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    finally:
        staged.unlink(missing_ok=True)
