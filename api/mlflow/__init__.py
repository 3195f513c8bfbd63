"""MLflow-compatible tracking API: MLflow's REST API 2.0 (`/api/2.0/mlflow/...`) and its
artifact proxy (`/api/2.0/mlflow-artifacts/...`) on runstream's pipeline, so code that logs
through the `mlflow` client lands in runstream unchanged (docs/mlflow.md).

Modules, one idea each: `protocol` (MLflow's error codes and JSON shapes), `status` (run
statuses both ways), `filters` (the search filter and order_by grammar -> parameterised
SQL), `objects` (the MLflow objects runstream's schema has no table for: experiments,
logged models, run inputs), `writer` (MLflow writes as wire events through the gateway's
producer, and read-after-write), `reads` (runs and metric history from ClickHouse),
`context` (what every endpoint shares), `routes` (the tracking endpoints), `fastpath` (the
per-step write calls answered before FastAPI's router), `progress` (how far the processors
have stored each partition: read-after-write), `models` (MLflow 3's logged models),
`artifacts` (the artifact proxy).
"""

from __future__ import annotations

from fastapi import APIRouter

from runstream.api.mlflow import artifacts, models, routes
from runstream.api.mlflow.fastpath import FastWrites

router = APIRouter()
router.include_router(routes.router)
router.include_router(models.router)
router.include_router(artifacts.router)

__all__ = ["FastWrites", "router"]
