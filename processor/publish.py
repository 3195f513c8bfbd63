"""Live publishing: the update of a stored batch, to this process's hubs and the live topic.

The update is built while the engine writes the batch's data tables (processor.live
shapes it) and sent once they are stored: first to the sinks of this process (an api hub
in `runstream up`, which then skips this processor's copies on the topic, identified by
the `origin` header), then as one message on the live topic for other api instances.
Best effort throughout: storage is the truth, and a failure here is logged, never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from runstream.live import ORIGIN_HEADER, LiveUpdate
from runstream.processor.caches import RunCache
from runstream.processor.live import build_updates
from runstream.processor.prepare import Prepared
from runstream.processor.stats import ProcessorStats

log = logging.getLogger("runstream.processor")

LiveSink = Callable[[list[LiveUpdate]], None]


class Sender(Protocol):
    async def send(self, topic: str, value: bytes, *, headers: list[tuple[str, bytes]]) -> Any: ...


class LivePublisher:
    def __init__(self, producer: Sender, topic: str, origin: bytes, sinks: list[LiveSink], runs: RunCache, stats: ProcessorStats) -> None:
        self.producer = producer
        self.topic = topic
        self.origin = origin
        self.sinks = sinks  # the processor's list: sinks attached later take part too
        self.runs = runs
        self.stats = stats

    def build(self, batch: Prepared) -> list[LiveUpdate] | None:
        try:
            touched = {(e.project, e.run) for e in batch.events} | set(batch.status_changes)
            return build_updates(batch.events, self.runs.experiments(touched), batch.status_changes, batch.built.metric_groups)
        except Exception as exc:
            log.warning("live update not built: %r", exc)
            return None

    async def publish(self, updates: list[LiveUpdate]) -> None:
        try:
            now = time.time()  # the updates were built before the write ended: stamp them as they go
            for update in updates:
                update["server_time"] = now
            for sink in self.sinks:
                try:
                    sink(updates)
                except Exception as exc:  # a hub bug must not stop the pipeline
                    log.warning("local live update not delivered: %r", exc)
            # One message per batch: the per-message cost, not the bytes, is what adds latency.
            payload = orjson.dumps({"type": "batch", "updates": updates})
            await self.producer.send(self.topic, payload, headers=[(ORIGIN_HEADER, self.origin)])
            self.stats.live_messages += len(updates)
            self.stats.live_bytes += len(payload)
        except Exception as exc:
            log.warning("live update not published: %s", exc)
