"""POST /api/v1/events: the ingest gateway for clients that cannot reach Kafka.

The batch is validated as a whole (one bad event rejects the request with its
index and reason, so a client never half-sends), then produced to Kafka keyed
by run id, exactly as the Python client would.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

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
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.kafka,
                    enable_idempotence=True,
                    compression_type="lz4",
                    linger_ms=5,
                    max_request_size=MAX_EVENT_BYTES,
                    max_batch_size=1024 * 1024,
                )
                await producer.start()
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def points_of(event: dict[str, Any]) -> int:
    kind = event.get("kind")
    if kind == "metrics" and isinstance(event.get("m"), list):
        return len(event["m"])
    if kind == "table" and isinstance(event.get("columns"), dict):
        return sum(len(v) for v in event["columns"].values() if isinstance(v, list))
    if kind == "log" and isinstance(event.get("lines"), list):
        return len(event["lines"])
    return 0


router = APIRouter()


@router.post("/api/v1/events", status_code=202, response_model=Accepted, tags=["ingest"])
async def post_events(batch: EventBatch, request: Request) -> Accepted:
    gateway: Gateway = request.app.state.gateway
    scope: str | None = request.state.project
    events = batch.events
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise HTTPException(413, f"{len(events)} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}")
    total = 0
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise HTTPException(422, f"event {i}: must be an object")
        n = points_of(event)
        if n > MAX_POINTS_PER_EVENT:
            raise HTTPException(413, f"event {i}: {n} points in one event; the limit is {MAX_POINTS_PER_EVENT}")
        total += n
    if total > MAX_POINTS_PER_REQUEST:
        raise HTTPException(413, f"{total} points in one request; the limit is {MAX_POINTS_PER_REQUEST}")
    encoded: list[tuple[bytes, bytes]] = []
    for i, event in enumerate(events):
        if scope is not None and event.get("project", scope) != scope:
            gateway.rejected += 1
            raise HTTPException(403, f"event {i}: this API key may only write to project {scope!r}")
        if scope is not None:
            event.setdefault("project", scope)
        try:
            validate(copy.copy(event))
        except WireError as exc:
            gateway.rejected += 1
            raise HTTPException(422, f"event {i}: {exc}") from None
        except Exception as exc:  # never a 5xx for a client's bytes
            gateway.rejected += 1
            raise HTTPException(422, f"event {i}: invalid ({type(exc).__name__})") from None
        encoded.append((str(event["run"]).encode(), encode(event)))
    try:
        producer = await gateway.producer()
        futures = [await producer.send(gateway.settings.events_topic, value, key=key) for key, value in encoded]
        await asyncio.gather(*futures)
    except Exception as exc:
        raise HTTPException(503, f"Kafka is not accepting events right now: {exc}") from None
    gateway.events_in += len(encoded)
    return Accepted(accepted=len(encoded), points=total)
