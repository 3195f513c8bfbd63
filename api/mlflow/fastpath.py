"""The MLflow calls a training loop makes at every step, answered before FastAPI's router.

An MLflow client waits for each `log_batch` / `log_metric` before its next training step,
so whatever the api spends on a call is spent by the training loop too. FastAPI tries its
routes in order (every api route before the MLflow ones) and wraps each endpoint in its
dependency and exception layers; for these few calls that was most of the api's own time
per call (docs/performance.md, issue 16). This ASGI layer sits inside the key check
(api/auth.py, which sets the request's project) and hands exactly these paths to the same
endpoint functions, with the same error answers (context.answering_errors); every other
request, and the OpenAPI description of these, stays FastAPI's.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from runstream.api.mlflow import routes
from runstream.api.mlflow.context import Handler, answering_errors

HOT_PATHS = tuple(f"{routes.PREFIX}/runs/{name}" for name in ("log-batch", "log-metric", "log-parameter", "set-tag"))


def hot_endpoints() -> dict[str, Handler]:
    """POST path -> the endpoint function routes.py registers for it."""
    posts = [r for r in routes.router.routes if isinstance(r, APIRoute) and "POST" in (r.methods or ())]
    found = {r.path: answering_errors(r.endpoint) for r in posts if r.path in HOT_PATHS}
    missing = set(HOT_PATHS) - set(found)
    if missing:
        raise RuntimeError(f"no MLflow endpoint registered for {sorted(missing)}")
    return found


class FastWrites:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.endpoints = hot_endpoints()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                response = await endpoint(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
