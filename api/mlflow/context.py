"""What every MLflow endpoint shares: the request's body (query string or JSON), project,
store and writer, and the route class that answers failures in MLflow's error shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute

from runstream.api.mlflow.protocol import MlflowError, invalid
from runstream.api.mlflow.writer import Writer
from runstream.errors import ApiError, StorageError
from runstream.storage.store import Store


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, allow_nan=False), status_code=status, media_type="application/json")


API_ERROR_CODES = {404: "RESOURCE_DOES_NOT_EXIST", 403: "PERMISSION_DENIED", 503: "TEMPORARILY_UNAVAILABLE"}
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def answering_errors(handler: Handler) -> Handler:
    """The handler, answering every failure in MLflow's error shape."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except MlflowError as exc:
            return json_response(exc.body(), exc.status)
        except ApiError as exc:
            code = API_ERROR_CODES.get(exc.status, "INVALID_PARAMETER_VALUE")
            return json_response(MlflowError(code, exc.detail).body(), exc.status)
        except StorageError as exc:
            code = "TEMPORARILY_UNAVAILABLE" if exc.transient else "INTERNAL_ERROR"
            return json_response(MlflowError(code, f"the run store failed: {exc}"[:500]).body(), 503 if exc.transient else 500)

    return route


class MlflowRoute(APIRoute):
    """Answers every failure in MLflow's error shape."""

    def get_route_handler(self) -> Handler:
        return answering_errors(super().get_route_handler())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        writer = getattr(app.state, "mlflow_writer", None)
        if writer is not None:
            await writer.close()


# --- request context ---


class Ctx:
    def __init__(self, request: Request, body: dict[str, Any]) -> None:
        self.request = request
        self.body = body
        self.store: Store = request.app.state.store
        self.project: str = request.state.project or request.app.state.settings.project
        writer = getattr(request.app.state, "mlflow_writer", None)
        if writer is None:
            writer = request.app.state.mlflow_writer = Writer(request.app.state.settings)
        self.writer: Writer = writer

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.store.call(fn, self.store, self.project, *args)


async def ctx(request: Request, json_body: bool = True) -> Ctx:
    """The request's context; its body is the query string (GET, DELETE) or, with json_body, the JSON body."""
    if request.method == "GET" or request.method == "DELETE" or not json_body:
        body: dict[str, Any] = {}
        for key in request.query_params:
            values = request.query_params.getlist(key)
            body[key] = values if len(values) > 1 or key in ("experiment_ids", "order_by") else values[0]
        return Ctx(request, body)
    raw = await request.body()
    try:
        parsed = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        try:
            parsed = json.loads(raw)  # a bare NaN or Infinity token, which Python's json writes
        except ValueError as exc:
            raise invalid(f"the body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise invalid("the body must be a JSON object")
    return Ctx(request, parsed)
