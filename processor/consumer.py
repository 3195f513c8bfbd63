"""The processor: Kafka consumer group -> ClickHouse, exactly once; the coordinator of its parts.

Exactly-once into ClickHouse: offsets are committed only after every table holds the
batch; on a partition assignment each table's watermark (its highest stored offset per
partition) is read back, so records replayed after a crash or a rebalance are skipped
table by table. Events that cannot be decoded or validated go to the dead-letter topic
with the reason, and the rest proceed.

Processor owns the loop and the order of a batch's steps; each step is a part of its own:
- intake: what was polled and when it makes a batch (the batching policy);
- prepare: decode, validate, dedupe, build the inserts; caches: run state, seen ids;
- watermarks: the highest stored offset per table and partition;
- lanes: the data write, then the ledger (grouped), each retried by retry (transient
  errors only: a non-transient one stops the loop with that error);
- publish: the live update; deadletter: the refused records;
- positions: where partitions are read from, the consumer lag, the background commits.
The parts that need no Kafka client are made with the Processor; the others at start(),
with the consumer and producer (made there unless passed in).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from runstream import kafka
from runstream.config import Settings
from runstream.errors import StorageError
from runstream.processor.caches import RunCache
from runstream.processor.deadletter import DeadLetters
from runstream.processor.intake import MAX_BATCH_BYTES, Intake
from runstream.processor.lanes import DataLane, LedgerLane
from runstream.processor.live import split_by_durability
from runstream.processor.positions import Commits, Positions
from runstream.processor.prepare import Prepared, Preparer
from runstream.processor.publish import LivePublisher, LiveSink
from runstream.processor.retry import StorageRetry
from runstream.processor.stats import ProcessorStats
from runstream.processor.watermarks import Watermarks
from runstream.storage.store import Store

log = logging.getLogger("runstream.processor")

__all__ = ["KafkaParts", "Processor", "ProcessorStats", "ensure_topics"]


async def ensure_topics(settings: Settings) -> None:
    """Create the pipeline's topics if missing (idempotent)."""
    admin = kafka.admin_client(settings.kafka)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(settings.events_topic, settings.partitions, 1),
            NewTopic(settings.live_topic, 1, 1, topic_configs={"retention.ms": "600000"}),
            NewTopic(settings.deadletter_topic, 1, 1),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, revoked: Callable[[], Awaitable[None]], assigned: Callable[[set[TopicPartition]], Awaitable[None]]) -> None:
        self.revoked = revoked
        self.assigned = assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.assigned(assigned)


@dataclass
class KafkaParts:
    """The parts that work through the Kafka clients, made at start()."""

    consumer: Any
    producer: Any
    intake: Intake
    positions: Positions
    commits: Commits
    dead_letters: DeadLetters
    publisher: LivePublisher


def _fatal(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and not exc.transient


class Processor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        group_id: str | None = None,
        publish_live: bool = True,
        max_records: int = 50_000,
        batch_window: float = 0.005,
        min_interval: float = 0.1,
        loaded_interval: float = 0.25,
        ledger_interval: float = 0.2,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        fail_injector: Callable[[str], Any] | None = None,
        consumer: Any = None,
        producer: Any = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.group_id = group_id or settings.group_id
        self.publish_live = publish_live
        self._batching = (max_records, batch_window, min_interval, loaded_interval, max_batch_bytes)  # for the Intake
        self._consumer = consumer
        self._producer = producer
        self.stats = ProcessorStats()
        self._stopping = asyncio.Event()
        self._failure: StorageError | None = None  # the non-transient storage error that stopped the loop
        self.retry = StorageRetry(store, self.stats, self._stopping, self._fail, fail_injector=fail_injector)
        self.watermarks = Watermarks(store, self.retry)
        self.runs = RunCache(store, self.retry)
        self.preparer = Preparer(self.watermarks, self.runs, self.stats)
        self.data = DataLane(store, self.watermarks, self.retry)
        self.ledger = LedgerLane(store, self.watermarks, self.retry, self._stopping, ledger_interval)
        self._parts: KafkaParts | None = None
        self._work_lock = asyncio.Lock()
        self._epoch = 0  # revocations and assignments: records polled in an earlier epoch are read again
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._data_done: asyncio.Future[bool] | None = None  # the batch in flight has its data tables written
        self._data_ahead: asyncio.Future[bool] | None = None  # the same for the batch before it
        # Live updates also go straight to an api hub in this process (`runstream up`), which
        # then skips this processor's messages on the live topic: no JSON and Kafka round trip
        # on the way to its browsers. Other api instances read the topic as before.
        self.origin = uuid.uuid4().hex.encode()
        self.live_sinks: list[LiveSink] = []

    @property
    def parts(self) -> KafkaParts:
        if self._parts is None:
            raise RuntimeError("the processor has not been started")
        return self._parts

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def failure(self) -> StorageError | None:
        return self._failure

    # --- lifecycle ---
    async def start(self) -> None:
        await ensure_topics(self.settings)
        producer = self._producer or kafka.processor_producer(self.settings)
        await producer.start()
        consumer = self._consumer or kafka.processor_consumer(self.settings, self.group_id)
        max_records, batch_window, min_interval, loaded_interval, max_batch_bytes = self._batching
        self._parts = KafkaParts(
            consumer=consumer,
            producer=producer,
            intake=Intake(
                consumer,
                lambda: self._epoch,
                max_records=max_records,
                batch_window=batch_window,
                min_interval=min_interval,
                loaded_interval=loaded_interval,
                max_batch_bytes=max_batch_bytes,
            ),
            positions=Positions(consumer, self.watermarks, self.stats),
            commits=Commits(consumer),
            dead_letters=DeadLetters(producer, self.settings.deadletter_topic, self.stats),
            publisher=LivePublisher(producer, self.settings.live_topic, self.origin, self.live_sinks, self.runs, self.stats),
        )
        consumer.subscribe([self.settings.events_topic], listener=_Rebalance(self._on_revoked, self._on_assigned))
        await consumer.start()
        self._task = asyncio.create_task(self._run(), name="runstream-processor")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            except Exception:  # the loop's failure: logged where it happened, and kept in `failure`
                pass
        try:
            await asyncio.wait_for(self.flush_commits(), 10)
        except Exception:
            pass
        if self._parts is not None:
            await self._parts.consumer.stop()
            await self._parts.producer.stop()

    async def wait_closed(self) -> None:
        """Until the consume loop has ended: after stop(), or when a non-transient storage
        error stopped it, which is then raised here."""
        if self._task is not None:
            await asyncio.wait({self._task})
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: StorageError) -> None:
        """A ClickHouse call failed for good (see processor.retry): nothing more is written
        or committed; the loop ends once the batch in flight has given up."""
        if self._failure is None:
            self._failure = error
        self._stopping.set()

    async def wait_inflight(self) -> None:
        task = self._inflight
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def flush_commits(self) -> None:
        if self._parts is not None:
            await self._parts.commits.flush()

    # --- rebalances ---
    async def _on_revoked(self) -> None:
        # The batch being prepared or written finishes and is committed by this owner
        # first; records polled but not yet prepared are dropped by the loop (it sees
        # the new epoch) and read again from where the assignment positions them.
        self._epoch += 1
        async with self._work_lock:
            await self.wait_inflight()
            await self.flush_commits()

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        # aiokafka hands out the new assignment's records (fetched from the committed
        # offset, or the reset: the earliest) while this runs. Prepared before the
        # watermarks are loaded, they would not be skipped; and the seek below moves the
        # partitions past what they came from. So what is polled until the partitions are
        # repositioned belongs to an earlier epoch: dropped by the loop, and read again
        # from the new positions. The first new epoch stops a batch not yet prepared; the
        # work lock keeps the loop from preparing until the second.
        self._epoch += 1
        async with self._work_lock:
            await self.watermarks.load(assigned)
            await self.parts.positions.reposition(assigned)
            self._epoch += 1

    # --- the loop ---
    async def _run(self) -> None:
        """Poll, prepare, write, with the write of one batch overlapping the polling and
        preparing of the next: the insert runs in the store's thread (the engine releases
        the GIL), and the records that arrive meanwhile become the next, larger batch."""
        try:
            while not self._stopping.is_set():
                try:
                    await self._step()
                except Exception as exc:  # the loop must outlive any one batch: a dead loop in a live process consumes nothing
                    if self._failure is not None:
                        break
                    await self._recover(exc)
        finally:
            await self.wait_inflight()
        if self._failure is not None:
            raise self._failure

    async def _step(self) -> None:
        k = self.parts
        epoch = self._epoch
        if k.intake.stale(epoch):  # polled before a rebalance
            async with self._work_lock:
                await self._reread()
            return
        try:
            data = await k.intake.first()
        except Exception as exc:  # broker hiccups must not end the loop
            log.warning("poll failed: %s", exc)
            await asyncio.sleep(0.5)
            return
        if not data:
            await k.positions.update_lag()
            return
        grown = await k.intake.grow(data, epoch, self._data_done)
        if grown is None:
            # A rebalance happened while this batch was being polled: some of it may
            # belong to another owner now, and which records came before the new
            # positions is unknowable. Drop it all and read again from the positions of
            # the current assignment, once the batch in flight is stored (its watermarks
            # then skip whatever the new positions replay).
            async with self._work_lock:
                await self._reread()
            return
        # At most one batch prepared ahead of the one being written: a backlog must not
        # be decoded into memory faster than the engine stores it.
        ahead = self._data_ahead
        if ahead is not None and not ahead.done():
            await asyncio.wait({ahead})
        async with self._work_lock:
            if self._failure is not None:
                return
            if self._epoch != epoch:  # a rebalance won the lock: see above
                await self._reread()
                return
            prepared = await self.preparer.prepare(grown)
            k.intake.started(prepared.built.points)
            previous, previous_data = self._inflight, self._data_done
            self._data_ahead = previous_data
            self._data_done = asyncio.get_running_loop().create_future()
            self._inflight = asyncio.create_task(self._finish(prepared, previous, previous_data, self._data_done))
        await k.positions.update_lag()

    async def _recover(self, exc: Exception) -> None:
        """After an unexpected error in the loop: the records polled but not prepared are
        dropped, so once the batch in flight is stored, every assigned partition is read
        again from the first record not stored (the watermarks skip anything replayed)."""
        log.exception("processor loop error; re-reading from the stored positions: %s", exc)
        self.stats.last_error = f"loop: {exc!r}"[:500]
        await asyncio.sleep(0.2)  # a persistent fault must not spin the CPU
        try:
            async with self._work_lock:
                await self.wait_inflight()
                # The failed batch may have moved the caches past what is stored: reload them.
                self.runs.clear()
                await self._reread()
        except Exception as again:
            log.error("repositioning after a loop error failed (retried on the next error or rebalance): %r", again)

    async def _reread(self) -> None:
        """Drop what was polled but not prepared and, once the batch in flight is stored,
        read every assigned partition again from the first record not stored (call with
        the work lock held)."""
        k = self.parts
        k.intake.drop()
        await self.wait_inflight()
        await k.positions.reposition(k.consumer.assignment(), rewind=True)

    # --- one batch ---
    async def _finish(
        self, batch: Prepared, previous: asyncio.Task[bool] | None, previous_data: asyncio.Future[bool] | None, data_done: asyncio.Future[bool]
    ) -> bool:
        """Write the data tables (after the previous batch's: a table's inserts stay in
        offset order, which its watermark relies on), publish the live update, then write
        the ledger (queued in data order) and commit after the previous batch. False when
        the batch was not written (stopping, or a non-transient storage error), and then
        no later batch writes or commits."""
        try:
            return await self._write_batch(batch, previous, previous_data, data_done)
        finally:
            if not data_done.done():  # never leave the next batch waiting
                data_done.set_result(False)

    async def _write_batch(
        self, batch: Prepared, previous: asyncio.Task[bool] | None, previous_data: asyncio.Future[bool] | None, data_done: asyncio.Future[bool]
    ) -> bool:
        k = self.parts
        built = batch.built
        t2 = time.perf_counter()
        try:
            if previous_data is not None and not await previous_data:
                data_done.set_result(False)
                return False
            # The data first: once points and log lines are stored the live update can go
            # out, while the summaries, the run rows and the ingested-events ledger are written.
            writing = asyncio.ensure_future(self.data.write(built))
            # The update is built while the engine writes (on its own thread, without the GIL)
            # and sent once the write is done. One turn of the loop first: that is when the
            # task hands the insert to the writer thread.
            await asyncio.sleep(0)
            updates = k.publisher.build(batch) if self.publish_live and batch.events else None
            await writing
        except Exception as exc:  # stopping, or a non-transient error (logged by the retry): the batch stays uncommitted and is replayed
            if not _fatal(exc):
                log.warning("batch not written before stop (it will be replayed): %s", exc)
            data_done.set_result(False)
            return False
        data_done.set_result(True)
        t3 = time.perf_counter()
        self.stats.points_written += built.points  # stored and queryable now; the ledger is bookkeeping for replays
        at_once, after_ledger = split_by_durability(updates) if updates else ([], [])
        sends = [asyncio.create_task(k.publisher.publish(at_once))] if at_once else []
        if not await self.ledger.write(batch):
            return False
        if after_ledger:  # the run rows they announce are readable now (processor.live.split_by_durability)
            sends.append(asyncio.create_task(k.publisher.publish(after_ledger)))
        if previous is not None and not await previous:  # commits stay in batch order
            return False
        t3b = time.perf_counter()
        self.stats.batches += 1
        self.stats.events_written += built.events
        self.stats.events_skipped += built.skipped

        if batch.dead:
            try:
                await k.dead_letters.send(batch.dead)
            except Exception as exc:  # the events are logged with their reasons; keep the pipeline going
                log.error("dead-letter topic not written: %s", exc)
        for send in sends:
            await send
        t4 = time.perf_counter()
        k.commits.schedule(batch.commit)
        t5 = time.perf_counter()
        for phase, spent in (("write", t3 - t2), ("ledger", t3b - t3), ("live", t4 - t3b), ("commit", t5 - t4)):
            self.stats.seconds[phase] += spent
        return True
