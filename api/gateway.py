"""POST /api/v1/events: the ingest gateway for clients that cannot reach Kafka.

The batch is validated as a whole (one bad event rejects the request with its
index and reason, so a client never half-sends), then produced to Kafka keyed
by run id, exactly as the Python client would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from runstream import kafka
from runstream.config import Settings
from runstream.wire import MAX_EVENT_BYTES, MAX_POINTS_PER_EVENT, WireError, encode, validate

MAX_EVENTS_PER_REQUEST = 10_000
MAX_POINTS_PER_REQUEST = 1_000_000
MAX_BODY_BYTES = 64 * 1024 * 1024


class EventBatch(BaseModel):
    events: list[dict[str, Any]] = Field(
        ...,
        description="Events in the wire schema (docs/events.md): each has v, id, kind, run, project, ts and a kind-specific payload.",
    )


class Accepted(BaseModel):
    accepted: int
    points: int


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self.events_in = 0
        self.rejected = 0

    async def producer(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = kafka.gateway_producer(self.settings)
                await producer.start()
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _items(column: object, itemsize: int) -> int:
    """Items in a JSON array or a packed (base64) column, before validation."""
    if isinstance(column, list):
        return len(column)
    if isinstance(column, str):
        return len(column) * 3 // 4 // itemsize
    return 0


def points_of(event: dict[str, Any]) -> int:
    kind = event.get("kind")
    if kind == "metrics":
        points = _items(event.get("m"), 4)
        rows = event.get("rows")
        if isinstance(rows, list):
            for frame in rows:
                if isinstance(frame, dict):
                    points += _items(frame.get("m"), 4) * _items(frame.get("s"), 8)
        return points
    if kind == "table" and isinstance(event.get("columns"), dict):
        return sum(len(v) for v in event["columns"].values() if isinstance(v, list))
    if kind == "log" and isinstance(event.get("lines"), list):
        return len(event["lines"])
    return 0


router = APIRouter()

REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": EventBatch.model_json_schema()}},
    }
}


def _reject(gateway: Gateway, status: int, detail: str) -> HTTPException:
    gateway.rejected += 1
    return HTTPException(status, detail)


async def _read_body(request: Request, gateway: Gateway) -> bytes:
    """The body, refused with 413 from Content-Length before reading, or as soon as it grows past the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise _reject(gateway, 400, "Content-Length must be an integer") from None
        if size > MAX_BODY_BYTES:
            raise _reject(gateway, 413, f"request body of {size} bytes exceeds the {MAX_BODY_BYTES}-byte limit; send smaller batches")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > MAX_BODY_BYTES:
            raise _reject(gateway, 413, f"request body exceeds the {MAX_BODY_BYTES}-byte limit; send smaller batches")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/api/v1/events", status_code=202, response_model=Accepted, tags=["ingest"], openapi_extra=REQUEST_BODY_DOC)
async def post_events(request: Request) -> Accepted:
    """Validate a whole batch, then produce it to Kafka; retrying a batch with the same event ids is harmless."""
    gateway: Gateway = request.app.state.gateway
    scope: str | None = request.state.project
    raw = await _read_body(request, gateway)
    try:
        body = orjson.loads(raw)  # strict: no NaN/Infinity literals, no lone surrogates, numbers within float64
    except orjson.JSONDecodeError as exc:
        raise _reject(gateway, 400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or "events" not in body:
        raise _reject(gateway, 422, 'the body must be a JSON object {"events": [...]}')
    events = body["events"]
    if not isinstance(events, list):
        raise _reject(gateway, 422, f"'events' must be an array, got {type(events).__name__}")
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise _reject(gateway, 413, f"{len(events)} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}")
    total = 0
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise _reject(gateway, 422, f"event {i}: must be an object, got {type(event).__name__}")
        n = points_of(event)
        if n > MAX_POINTS_PER_EVENT:
            raise _reject(gateway, 413, f"event {i}: {n} points in one event; the limit is {MAX_POINTS_PER_EVENT}")
        total += n
    if total > MAX_POINTS_PER_REQUEST:
        raise _reject(gateway, 413, f"{total} points in one request; the limit is {MAX_POINTS_PER_REQUEST}")
    encoded: list[tuple[bytes, bytes]] = []
    for i, event in enumerate(events):
        if scope is not None and event.get("project", scope) != scope:
            raise _reject(gateway, 403, f"event {i}: this API key may only write to project {scope!r}")
        if scope is not None:
            event.setdefault("project", scope)
        try:
            validate(event)  # leaves the event as sent: that is what goes to Kafka
            key, value = str(event["run"]).encode(), encode(event)
        except WireError as exc:
            raise _reject(gateway, 422, f"event {i}: {exc}") from None
        except Exception as exc:  # never a 5xx for a client's bytes
            raise _reject(gateway, 422, f"event {i}: invalid ({type(exc).__name__}: {exc})"[:500]) from None
        if len(key) + len(value) + kafka.RECORD_OVERHEAD_BYTES > MAX_EVENT_BYTES:
            raise _reject(gateway, 413, f"event {i} is {len(value)} bytes encoded; the limit is {MAX_EVENT_BYTES - kafka.RECORD_OVERHEAD_BYTES}")
        encoded.append((key, value))
    await _check_run_owners(request, gateway, events)
    try:
        producer = await gateway.producer()
        futures = [await producer.send(gateway.settings.events_topic, value, key=key) for key, value in encoded]
        await asyncio.gather(*futures)
    except Exception as exc:
        raise HTTPException(503, f"Kafka is not accepting events right now ({type(exc).__name__}); retry the same batch") from None
    gateway.events_in += len(encoded)
    return Accepted(accepted=len(encoded), points=total)


async def _check_run_owners(request: Request, gateway: Gateway, events: list[dict[str, Any]]) -> None:
    """A run id belongs to the project that created it: events naming it under another project are refused (409).

    Without this a key of project A could change the status, tags or params of
    project B's run by reusing its id (the processor keeps run state by id).
    """
    store = request.app.state.store
    if store is None or not events:
        return
    claims: dict[str, set[str]] = {}
    for event in events:
        claims.setdefault(str(event["run"]), set()).add(str(event["project"]))
    for run, projects in claims.items():
        if len(projects) > 1:
            raise _reject(gateway, 409, f"run {run!r} appears under several projects in one batch")
    sql = "SELECT run_id, groupUniqArray(project) FROM runs WHERE run_id IN {ids:Array(String)} GROUP BY run_id"
    try:
        rows = await store.call(store.query_rows, sql, {"ids": list(claims)})
    except Exception as exc:
        raise HTTPException(503, f"the run store is not answering right now ({type(exc).__name__}); retry the same batch") from None
    for run, owners in rows:
        if not claims.get(run, set()) & set(owners):
            raise _reject(gateway, 409, f"run id {run!r} is already used by another project; start runs with fresh ids")
