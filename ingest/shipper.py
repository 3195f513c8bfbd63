"""The background shipper: one thread per process running an aiokafka producer.

Training threads only append to their runs' buffers (ingest/buffer.py); the
shipper drives them through the `Outbox` interface. Every `linger` seconds
(sooner when a buffer fills) it takes each buffer's sealed events, in the order
they were logged, and produces them keyed by run id with the client producer
(runstream.kafka.client_producer). `flush()`
waits for the acknowledgement of everything sealed so far; interpreter exit
flushes too.

When Kafka is away (a send stalls for STALL_S or fails), the shipper switches
to spooling: each tick moves the runs' events to the disk spool (ingest/spool.py)
so memory stays bounded, and every second it tries to replay the spool, in
order; once the spool is empty it ships directly again. Events still buffered
at exit are spooled and replayed by the next process. One warning when Kafka
goes away, one when it is back, one when the disk bound makes it drop.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from runstream import kafka
from runstream.config import Settings
from runstream.ingest.buffer import Event, Outbox
from runstream.ingest.spool import Spool
from runstream.wire import encode

log = logging.getLogger("runstream.client")

LINGER_S = 0.025
HEARTBEAT_S = 15.0
DEFAULT_MAX_BUFFERED_POINTS = 2_000_000
DEFAULT_MAX_SPOOL_BYTES = 2 * 1024**3
STALL_S = 5.0
REPLAY_EVERY_S = 1.0


class Producer(Protocol):
    """The part of aiokafka's producer the shipper uses."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        """Hand a record over (waits while the producer's buffer is full); the future is its acknowledgement."""
        ...


class Shipper:
    """Ships the events of registered buffers; a `Sink` for them (memory bound, nudge, drop).

    producer_factory: a new producer, started by the shipper (after a failure it makes
    another); by default the client producer for `settings`. spool_factory: the disk
    spool, made on first need; by default a Spool under settings.spool_dir."""

    def __init__(
        self,
        settings: Settings,
        *,
        producer_factory: Callable[[], Producer] | None = None,
        spool_factory: Callable[[], Spool] | None = None,
        linger: float = LINGER_S,
        max_buffered_points: int = DEFAULT_MAX_BUFFERED_POINTS,
    ) -> None:
        self.settings = settings
        self.linger = linger
        # Open runs' heartbeats: readers show a run Crashed after runstream.lifecycle's
        # threshold without any event, so this must stay well inside it.
        self.heartbeat_s = float(os.environ.get("RUNSTREAM_HEARTBEAT_S", "") or HEARTBEAT_S)
        self.max_buffered_points = max_buffered_points
        self.buffered_points = 0  # recomputed by the shipper thread from the runs' exact counts
        self.over_limit = False
        self.dropped_points = 0
        self.sent_events = 0
        self.acked_events = 0
        self.failed_sends = 0
        # Buffers by run id: those of runs not yet ended are kept (and heartbeated) until they end.
        self._runs: weakref.WeakValueDictionary[str, Outbox] = weakref.WeakValueDictionary()
        self._open: dict[str, Outbox] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="runstream-shipper", daemon=True)
        self._new_producer: Callable[[], Producer] = producer_factory or (lambda: kafka.client_producer(settings))
        self._producer: Producer | None = None
        self._inflight: set[asyncio.Future[Any]] = set()
        self._wake = asyncio.Event()
        self._drain_lock: asyncio.Lock | None = None
        self._warned_down = False
        self._warned_drop = False
        self._closed = False
        self.max_spool_bytes = int(os.environ.get("RUNSTREAM_SPOOL_MAX_BYTES", DEFAULT_MAX_SPOOL_BYTES))
        self._new_spool: Callable[[], Spool] = spool_factory or (lambda: Spool(settings.spool_dir, self.max_spool_bytes))
        self.spool: Spool | None = None
        self.spooling = False
        self.spooled_events = 0
        self.replayed_events = 0
        self._sent_at: dict[asyncio.Future[Any], float] = {}
        self._last_replay = 0.0
        orphans = Spool.orphans(settings.spool_dir)
        if orphans:
            self._spool().adopt(orphans)
            self.spooling = True
            log.warning("runstream: replaying events spooled by an earlier process (%s)", ", ".join(d.name for d in orphans))
        self._thread.start()
        self._main: Future[None] = asyncio.run_coroutine_threadsafe(self._main_loop(), self._loop)

    # --- called from training threads ---
    def register(self, buffer: Outbox) -> None:
        self._runs[buffer.run_id] = buffer
        self._open[buffer.run_id] = buffer

    def unregister(self, buffer: Outbox) -> None:
        """The run has ended: no more heartbeats, and its buffer lives as long as its run."""
        self._open.pop(buffer.run_id, None)

    def nudge(self) -> None:
        """A buffer is full: drain now rather than at the next linger tick."""
        self._loop.call_soon_threadsafe(self._wake.set)

    def drop(self, n: int) -> None:
        """The memory bound is reached: count n points as dropped and warn once."""
        self.dropped_points += n
        if not self._warned_drop:
            self._warned_drop = True
            log.warning(
                "runstream: client buffer full (%d points) - Kafka at %s is not keeping up; dropping points (see shipper.dropped_points)",
                self.max_buffered_points,
                self.settings.kafka,
            )

    def _recount(self) -> None:
        # Exact per-run counts, summed off the training thread; logging calls read one flag.
        total = sum(buffer.buffered for buffer in list(self._runs.values()))
        self.buffered_points = total
        self.over_limit = total >= self.max_buffered_points

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Block until every event sealed so far is acknowledged; False on timeout."""
        if self._closed:
            return True
        fut = asyncio.run_coroutine_threadsafe(self._flush(), self._loop)
        try:
            fut.result(timeout)
            return True
        except TimeoutError:
            fut.cancel()
            log.warning("runstream: flush timed out after %ss; events stay buffered and will be retried", timeout)
            return False

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        delivered = self.flush(timeout)
        self._closed = True
        if not delivered:
            # Kafka is away: keep what is left on disk for the next process to replay.
            spill = asyncio.run_coroutine_threadsafe(self._spill(), self._loop)
            try:
                spill.result(30)
            except Exception as exc:
                log.error("runstream: could not spool undelivered events at exit: %s", exc)
        if self.spool is not None:
            self.spool.close()
        fut = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
        try:
            fut.result(10)
        except Exception:
            pass
        # Let the main loop see _closed and return before the loop stops (no task destroyed while pending).
        self._loop.call_soon_threadsafe(self._wake.set)
        try:
            self._main.result(5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)

    # --- the shipper thread ---
    async def _ensure_producer(self) -> Producer:
        if self._producer is None:
            producer = self._new_producer()
            await producer.start()
            self._producer = producer
            if self._warned_down:
                log.warning("runstream: Kafka at %s is reachable again; shipping buffered events", self.settings.kafka)
                self._warned_down = False
        return self._producer

    async def _watch_memory(self) -> None:
        # The main loop can sit in a send for as long as the producer's buffer is full (a
        # stalled broker); the memory bound must not wait for it.
        while not self._closed:
            await asyncio.sleep(self.linger)
            self._recount()

    async def _main_loop(self) -> None:
        self._drain_lock = asyncio.Lock()
        watcher = asyncio.create_task(self._watch_memory())
        try:
            await self._ship_loop()
        finally:
            watcher.cancel()

    async def _ship_loop(self) -> None:
        last_heartbeat = time.time()
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), self.linger)
            except TimeoutError:
                pass
            self._wake.clear()
            self._recount()
            now = time.time()
            if now - last_heartbeat >= self.heartbeat_s:
                last_heartbeat = now
                for buffer in list(self._open.values()):
                    buffer.heartbeat()
            try:
                if self.spooling:
                    await self._spill()
                    if time.monotonic() - self._last_replay >= REPLAY_EVERY_S:
                        await self._replay()
                else:
                    await self._drain()
                    oldest = min(self._sent_at.values(), default=None)
                    if oldest is not None and time.monotonic() - oldest > STALL_S:
                        self._enter_spooling(f"no acknowledgement for {STALL_S:.0f} s")
            except Exception as exc:
                self._enter_spooling(str(exc) or type(exc).__name__)
                await self._reset_producer()

    def _spool(self) -> Spool:
        if self.spool is None:
            self.spool = self._new_spool()
        return self.spool

    def _enter_spooling(self, reason: str) -> None:
        if not self.spooling:
            self.spooling = True
            self._last_replay = time.monotonic()
            if not self._warned_down:
                self._warned_down = True
                log.warning(
                    "runstream: Kafka at %s is not taking events (%s); spooling to %s and replaying when it is back",
                    self.settings.kafka,
                    reason,
                    self.settings.spool_dir,
                )

    async def _spill(self) -> None:
        """Move every run's sealed events to the disk spool, in order."""
        spool = self._spool()
        for buffer in list(self._runs.values()):
            events = buffer.take_events()
            if not events:
                continue
            key = buffer.run_id.encode()
            records = [(self.settings.events_topic, key, encode(event)) for event, _ in events]
            refused = spool.append(records)
            self.spooled_events += len(records) - refused
            buffer.acked(sum(points for _, points in events))
            if refused:
                self.dropped_points += sum(points for _, points in events[len(events) - refused :])
                if not self._warned_drop:
                    self._warned_drop = True
                    log.warning("runstream: spool full (%d bytes); dropping events (see shipper.dropped_points)", spool.max_bytes)

    async def _replay(self) -> None:
        """Send sealed spool segments in order; leave spooling once all are acknowledged."""
        self._last_replay = time.monotonic()
        spool = self._spool()
        spool.seal()
        producer = await asyncio.wait_for(self._ensure_producer(), 10)
        for path in spool.sealed_segments():
            records = spool.read(path)
            futures = [await producer.send(topic, value, key=key) for topic, key, value in records]
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), STALL_S * 3)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
            self.replayed_events += len(records)
            spool.remove(path)
        if not spool.has_data and not any(buffer.has_pending() for buffer in list(self._runs.values())):
            self.spooling = False
            log.warning("runstream: Kafka at %s is back; %d spooled events replayed", self.settings.kafka, self.replayed_events)
            self._warned_down = False
        elif not spool.has_data:
            # Events logged during the replay: spill them and go round once more.
            await self._spill()

    async def _reset_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 5)
            except Exception:
                pass

    async def _drain(self) -> None:
        assert self._drain_lock is not None
        async with self._drain_lock:
            buffers = list(self._runs.values())
            if not any(buffer.has_pending() for buffer in buffers):
                return
            producer = await self._ensure_producer()
            loop = asyncio.get_running_loop()
            # A send waiting STALL_S for room in a full batch is a stalled broker: spool. One
            # timeout moved on before each send, not a wait_for per send: wait_for wraps each
            # send in a task, several times the cost of the send, and a live run sends an event per step.
            async with asyncio.timeout(None) as deadline:
                for buffer in buffers:
                    events = buffer.take_events()
                    if not events:
                        continue
                    key = buffer.run_id.encode()
                    sent = 0
                    try:
                        for i, item in enumerate(events):
                            deadline.reschedule(loop.time() + STALL_S)
                            fut = await producer.send(self.settings.events_topic, encode(item[0]), key=key)
                            sent = i + 1
                            self._track(fut, buffer, item)
                    except BaseException:  # the timeout surfaces as CancelledError inside the block
                        buffer.requeue(events[sent:])
                        raise

    def _track(self, fut: asyncio.Future[Any], buffer: Outbox, event: Event) -> None:
        self.sent_events += 1
        self._inflight.add(fut)
        self._sent_at[fut] = time.monotonic()

        def done(f: asyncio.Future[Any]) -> None:
            self._inflight.discard(f)
            self._sent_at.pop(f, None)
            if f.cancelled() or f.exception() is not None:
                self.failed_sends += 1
                buffer.requeue([event])
                self._wake.set()
            else:
                self.acked_events += 1
                buffer.acked(event[1])

        fut.add_done_callback(done)

    async def _flush(self) -> None:
        while True:
            if self.spooling:
                try:
                    await self._spill()
                    await self._replay()
                except Exception:
                    await self._reset_producer()
                    await asyncio.sleep(0.5)
                    continue
                if self.spooling:
                    await asyncio.sleep(0.1)
                    continue
            try:
                await self._drain()
            except Exception as exc:
                self._enter_spooling(str(exc) or type(exc).__name__)
                await self._reset_producer()
                continue
            pending = list(self._inflight)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if not any(buffer.has_pending() for buffer in list(self._runs.values())) and not self._inflight:
                return

    async def _stop(self) -> None:
        await self._reset_producer()


_shipper: Shipper | None = None
_shipper_lock = threading.Lock()


def get_shipper(settings: Settings) -> Shipper:
    global _shipper
    with _shipper_lock:
        if (
            _shipper is None
            or _shipper._closed
            or _shipper.settings.kafka != settings.kafka
            or _shipper.settings.events_topic != settings.events_topic
        ):
            _shipper = Shipper(settings)
        return _shipper


def _at_exit() -> None:
    if _shipper is not None:
        _shipper.close(timeout=float(os.environ.get("RUNSTREAM_EXIT_FLUSH_TIMEOUT", "30")))


atexit.register(_at_exit)
