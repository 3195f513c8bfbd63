"""MLflow writes as wire events on Kafka, and read-after-write for the client that wrote.

Every write (create_run, log_batch, set_tag, update_run ...) becomes events of the wire
format (docs/events.md), checked by `runstream.wire.validate` and produced to the events
topic keyed by run id, as the ingest gateway (api/gateway.py) does: the processor stores
them exactly once and pushes them live like any client's. The answer waits for Kafka's
acknowledgement. The producer is the gateway's configuration without linger: an MLflow
client sends one call at a time and waits for each, so 5 ms of linger would be 5 ms on
every call (concurrent calls still share a produce request).

Metric events carry an id derived from their content (run, points), so a client's retry
of the same call is stored once, as MLflow's own store keeps one row per identical
point; other events get fresh ids (setting a tag back to an earlier value must count).

Read-after-write, for writes through any api instance (api/mlflow/progress.py): a read of
a run (get_run, metric history, search) first waits until the processor group has stored
its partition up to the end offset Kafka had when the read began, polling with a short
back-off, at most `wait_timeout` seconds; `stats` records what the waits cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from runstream import kafka
from runstream.api.mlflow.progress import Progress
from runstream.api.mlflow.protocol import MlflowError, invalid
from runstream.config import Settings
from runstream.kafka import RECORD_OVERHEAD_BYTES
from runstream.wire import MAX_EVENT_BYTES, WIRE_VERSION, WireError, encode, validate

log = logging.getLogger("runstream.api.mlflow")


@dataclass
class WaitStats:
    reads: int = 0  # reads that checked for pending writes
    waited: int = 0  # of them, reads that found writes not yet stored
    wait_s_total: float = 0.0
    wait_s_max: float = 0.0
    polls: int = 0
    timeouts: int = 0
    unchecked: int = 0  # reads answered without the check (the broker did not answer it)
    sends: int = 0  # write calls produced to Kafka
    send_s_total: float = 0.0  # their time from the first send to Kafka's last acknowledgement

    def as_dict(self) -> dict[str, float]:
        return {
            "reads": self.reads,
            "waited": self.waited,
            "wait_ms_total": round(self.wait_s_total * 1e3, 3),
            "wait_ms_mean": round(self.wait_s_total / self.waited * 1e3, 3) if self.waited else 0.0,
            "wait_ms_max": round(self.wait_s_max * 1e3, 3),
            "polls": self.polls,
            "timeouts": self.timeouts,
            "unchecked": self.unchecked,
            "sends": self.sends,
            "send_ms_mean": round(self.send_s_total / self.sends * 1e3, 3) if self.sends else 0.0,
        }


class Writer:
    def __init__(self, settings: Settings, wait_timeout: float = 10.0) -> None:
        self.settings = settings
        self.wait_timeout = wait_timeout
        self.session = f"mlflow-{uuid.uuid4().hex[:12]}"
        self._seq = itertools.count()
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self.progress = Progress(settings)
        self.events_out = 0
        self.stats = WaitStats()

    async def producer(self) -> AIOKafkaProducer:
        if self._producer is not None:  # every call after the first: no lock on the hot path
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = kafka.gateway_producer(self.settings, linger_ms=0)
                await producer.start()
                self._producer = producer
            return self._producer

    async def close(self) -> None:
        await self.progress.close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def event(self, kind: str, run: str, project: str, ts: float | None = None, **payload: Any) -> dict[str, Any]:
        """A wire event with a fresh id."""
        event = {"v": WIRE_VERSION, "id": f"{self.session}:{next(self._seq)}", "kind": kind, "run": run, "project": project}
        event["ts"] = time.time() if ts is None else ts
        event.update(payload)
        return event

    @staticmethod
    def content_id(event: dict[str, Any]) -> str:
        """The id of an event that is the same call again when its content is the same."""
        body = {k: v for k, v in event.items() if k not in ("id", "ts")}
        return "mlflow-c:" + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:40]

    async def send(self, events: list[dict[str, Any]]) -> None:
        """Validate every event, then produce them all and wait for Kafka's acknowledgement."""
        encoded: list[tuple[dict[str, Any], bytes, bytes]] = []
        for event in events:
            try:
                validate(event)
                key, value = str(event["run"]).encode(), encode(event)
            except WireError as exc:
                raise invalid(str(exc)) from None
            if len(key) + len(value) + RECORD_OVERHEAD_BYTES > MAX_EVENT_BYTES:
                raise invalid(f"the request is {len(value)} bytes as one event; the limit is {MAX_EVENT_BYTES - RECORD_OVERHEAD_BYTES}")
            encoded.append((event, key, value))
        t0 = time.perf_counter()
        try:
            producer = await self.producer()
            futures = [await producer.send(self.settings.events_topic, value, key=key) for _, key, value in encoded]
            await asyncio.gather(*futures)
            self.stats.sends += 1
            self.stats.send_s_total += time.perf_counter() - t0
        except Exception as exc:
            raise MlflowError("TEMPORARILY_UNAVAILABLE", f"Kafka is not accepting events right now ({type(exc).__name__}); retry") from None
        self.events_out += len(encoded)

    async def wait_stored(self, runs: list[str] | None = None) -> None:
        """Wait (bounded) until the processors have stored every write acknowledged until now
        to these runs (None: to any run), through this api instance or another."""
        self.stats.reads += 1
        t0 = time.perf_counter()
        try:
            behind = await self.progress.behind(await self.progress.partitions(await self.producer(), runs))
        except Exception as exc:  # the broker is down or moving: answer from what is stored
            self.stats.unchecked += 1
            log.warning("read-after-write: Kafka did not answer the check (%s); answering from what is stored", exc)
            return
        if not behind:
            return
        self.stats.waited += 1
        delay = 0.002
        deadline = t0 + self.wait_timeout
        while behind:
            if time.perf_counter() + delay > deadline:
                self.stats.timeouts += 1
                log.warning("read-after-write: %d partitions not stored after %.1fs; answering from what is stored", len(behind), self.wait_timeout)
                self.progress.give_up(behind)
                break
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.025)
            self.stats.polls += 1
            try:
                behind = await self.progress.still_behind(behind)
            except Exception as exc:
                self.stats.unchecked += 1
                log.warning("read-after-write: Kafka did not answer the check (%s); answering from what is stored", exc)
                break
        waited = time.perf_counter() - t0
        self.stats.wait_s_total += waited
        self.stats.wait_s_max = max(self.stats.wait_s_max, waited)
