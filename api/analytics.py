"""Analytics over run history: compare, leaderboard, grouped aggregates, read-only SQL.

The HTTP layer only: reads live in `api.analytics_queries`, the SQL guard and its
views in `api.sql_guard` / `api.sql_views` (docs/analytics.md).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from runstream.api import analytics_queries as aq
from runstream.api.sql_guard import SqlEngine
from runstream.storage.store import Store

router = APIRouter(prefix="/api/v1", tags=["analytics"])


async def _call(request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    store: Store = request.app.state.store
    return await store.call(fn, store, *args, **kwargs)


@router.get("/compare")
async def compare(
    request: Request,
    runs: str = Query(..., description="comma-separated run ids (at most 1000)"),
    metrics: str = Query(..., description="comma-separated metric names (at most 100)"),
) -> dict[str, Any]:
    """Summary statistics (first, last, min, max, mean, count, last_step) per metric and run."""
    result: dict[str, Any] = await _call(request, aq.compare, request.state.project, aq.split_csv(runs), aq.split_csv(metrics))
    return result


@router.get("/leaderboard")
async def leaderboard(
    request: Request,
    metric: str,
    experiment: str | None = None,
    mode: Literal["min", "max"] = "min",
    stat: Literal["last", "min", "max", "mean", "first", "count"] = "last",
    limit: int = Query(10, ge=1, le=10_000),
) -> dict[str, Any]:
    """The best runs by one statistic of a metric (runs without a finite value are left out)."""
    result: dict[str, Any] = await _call(request, aq.leaderboard, request.state.project, metric, mode, stat, limit, experiment)
    return result


@router.get("/aggregate")
async def aggregate(
    request: Request,
    metric: str,
    experiment: str | None = None,
    group_by: str | None = Query(None, description="tag.<key>, param.<key>, experiment or none"),
    max_points: int = Query(1000, ge=1, le=aq.MAX_AGGREGATE_POINTS),
    runs: str | None = Query(None, description="optional comma-separated run ids"),
) -> dict[str, Any]:
    """Per group and step: mean, population std, min, max and count across runs (bucketed beyond max_points)."""
    result: dict[str, Any] = await _call(
        request,
        aq.aggregate,
        request.state.project,
        metric,
        experiment=experiment,
        group_by=group_by,
        runs=aq.split_csv(runs) or None,
        max_points=max_points,
    )
    return result


class SqlRequest(BaseModel):
    sql: str = Field(..., description="one SELECT over the documented views")
    format: Literal["json", "csv", "parquet"] = "json"
    max_rows: int | None = Field(None, ge=1, description="row cap (default 10000, at most 1000000)")
    timeout_s: float | None = Field(None, gt=0, description="time limit, at most the server's (10 s by default)")


def sql_engine(request: Request) -> SqlEngine:
    """The app's SqlEngine, created on first use (it opens a client of its own)."""
    engine: SqlEngine | None = getattr(request.app.state, "sql_engine", None)
    if engine is None:
        engine = SqlEngine(request.app.state.store, getattr(request.app.state, "sql_limits", None))
        request.app.state.sql_engine = engine
    return engine


@router.post("/query", response_model=None)
async def query(request: Request, body: SqlRequest) -> Response | dict[str, Any]:
    """Read-only SQL over the documented views, with row, read and time limits."""
    # A QueryRefused answers with its status through api.app's ApiError handler.
    result = await sql_engine(request).arun(body.sql, request.state.project, body.format, body.max_rows, body.timeout_s)
    headers = {"X-Row-Count": str(result.json()["row_count"]), "X-Truncated": str(result.truncated).lower()}
    if body.format == "csv":
        return Response(result.body or b"", media_type="text/csv; charset=utf-8", headers=headers)
    if body.format == "parquet":
        return Response(result.body or b"", media_type="application/vnd.apache.parquet", headers=headers)
    return result.json()
