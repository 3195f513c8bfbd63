"""The FastAPI application: REST, gateway, WebSocket hub and dashboard."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runstream.api import analytics, auth, gateway, live, metrics, mlflow, routes_runs
from runstream.api.artifacts import LocalArtifactStore
from runstream.api.sql_guard import Limits
from runstream.config import Settings
from runstream.errors import ApiError
from runstream.keys import KeyStore
from runstream.storage.store import Store

log = logging.getLogger("runstream.api")


def dashboard_dir() -> Path | None:
    """The dashboard's files from the installed package (a wheel or the editable checkout)."""
    try:
        folder = Path(str(resources.files("runstream.dashboard")))
    except ModuleNotFoundError:
        return None
    return folder if (folder / "index.html").is_file() else None


def server_config(app: Any, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    """How the api is served. WebSocket compression is off: live frames are small and
    frequent, and deflating each one for every subscriber cost the api process more CPU
    than anything else in the fan-out (bench/live.py)."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning", ws_per_message_deflate=False, **kwargs)


# Kernel send buffer per connection. Left to autotuning, loopback and LAN sockets grow it
# to megabytes, which hides a slow WebSocket subscriber from the hub: its updates sit in
# the socket instead of being coalesced, and it sees seconds-old points. 256 KiB still
# fills a LAN link for file downloads.
SEND_BUFFER_BYTES = 256 * 1024


def listen_socket(host: str, port: int) -> socket.socket:
    """The api's listening socket; accepted connections inherit its send buffer."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    # asyncio turns Nagle off only on sockets it creates as IPPROTO_TCP; accepted connections
    # inherit this. With Nagle on, uvicorn's separate header and body writes waited for the
    # client's delayed ACK: ~44 ms on every loopback request, 0.8 ms without (api/mlflow).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def create_app(settings: Settings, store: Store, processor: Any = None) -> FastAPI:
    gw = gateway.Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = getattr(app.state, "hub", None)
        if hub is not None:
            await hub.start()
        try:
            yield
        finally:
            if hub is not None:
                await hub.stop()
            await gw.close()

    app = FastAPI(
        title="runstream",
        version="0.1.0",
        description="Metrics of ML training runs: ingest gateway, run history, analytics and live updates.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.processor = processor
    app.state.gateway = gw
    app.state.artifacts = LocalArtifactStore(settings.artifacts_dir)
    app.state.hub = live.LiveHub(settings, store)
    if processor is not None:
        app.state.hub.attach(processor)
    app.state.max_upload_bytes = 512 * 1024 * 1024
    app.state.sql_limits = Limits(concurrency=settings.sql_concurrency, project_share=settings.sql_project_share, dsn=settings.sql_clickhouse or None)
    app.state.started_at = time.time()

    app.state.auth = auth.Auth(KeyStore(settings.home / "keys.json"))
    # Added first, so inside the key check: MLflow's per-step writes skip the router (api/mlflow/fastpath.py).
    app.add_middleware(mlflow.FastWrites)
    app.add_middleware(auth.AuthMiddleware, auth=app.state.auth)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "uptime_s": round(time.time() - app.state.started_at, 1)}
        try:
            await store.call(store.query_rows, "SELECT 1")
            body["clickhouse"] = "ok"
        except Exception as exc:
            body["clickhouse"] = f"error: {exc}"[:300]
            body["status"] = "degraded"
        if processor is not None:
            stats = processor.stats
            body["processor"] = {
                "events_in": stats.events_in,
                "points_written": stats.points_written,
                "batches": stats.batches,
                "batches_retried": stats.batches_retried,
                "dead_letters": stats.dead_letters,
                "consumer_lag": stats.consumer_lag,
                "clickhouse_ok": stats.clickhouse_ok,
                "last_error": stats.last_error or None,
            }
            if not stats.clickhouse_ok:
                body["status"] = "degraded"
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    registry = metrics.registry_for(processor, gw, app.state.hub)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        # One place turns the error tree into HTTP: the status travels with the error.
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    app.include_router(gateway.router)
    app.include_router(routes_runs.router)
    app.include_router(analytics.router)
    app.include_router(live.router)
    app.include_router(mlflow.router)
    folder = dashboard_dir()
    if folder is None:
        log.warning("no dashboard files in the installed package: / will answer 404 (install runstream[server] from a wheel built with npm)")
    else:
        if not (folder / "vendor" / "uPlot.esm.js").is_file():
            log.warning("dashboard at %s has no vendor/uPlot.esm.js: charts will not draw (run `make dashboard-assets`)", folder)
        app.mount("/", StaticFiles(directory=folder, html=True), name="dashboard")
    return app
