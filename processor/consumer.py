"""The consumer loop: poll a batch, write it, then commit.

Exactly-once into ClickHouse: offsets are committed only after every table
holds the batch; on a partition assignment each table's watermark (its highest
stored offset per partition) is read back, so records replayed after a crash or
a rebalance are skipped table by table. Events that cannot be decoded or
validated go to the dead-letter topic with the reason, and the rest proceed.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import IllegalStateError, TopicAlreadyExistsError
from runstream.processor import batch as batching
from runstream.processor.live import RunKey, build_updates
from runstream.processor.runstate import RUN_COLUMNS, RunState, apply
from runstream.processor.seen import SeenIds

from runstream import kafka
from runstream.config import Settings
from runstream.events import ValidatedEvent
from runstream.live import ORIGIN_HEADER, LiveUpdate
from runstream.storage.schema import WATERMARKED_TABLES
from runstream.storage.store import Store
from runstream.wire import WireError, decode, validate

log = logging.getLogger("runstream.processor")

MAX_RUN_CACHE = 100_000
LOADED_POINTS = 20_000  # a batch this large means a heavy stream (a live one at 20,000 points/s makes ~1,000): batch less often
PAUSE_S = 0.04  # a poll this long with nothing new: the stream paused, write now
MAX_BATCH_BYTES = 2_500_000  # ~250,000 points of packed rows frames (8-12 bytes a point on the wire)
WRITE_POLL_S = 0.02  # while a batch is written, take what the consumer has fetched this often
# The points, tables, logs and files go first: once they are stored the live update goes out.
# The ledger lane then writes the summaries, the run rows and the ingested-events ledger.
LEDGER_TABLES = ("metric_summaries", "ingested_events")
DATA_TABLES = tuple(t for t in WATERMARKED_TABLES if t not in LEDGER_TABLES)


@dataclass
class ProcessorStats:
    events_in: int = 0
    points_written: int = 0
    events_written: int = 0
    events_skipped: int = 0
    batches: int = 0
    batches_retried: int = 0
    dead_letters: int = 0
    live_messages: int = 0
    live_bytes: int = 0
    consumer_lag: int = 0
    clickhouse_ok: bool = True
    last_error: str = ""
    started_at: float = field(default_factory=time.time)
    # Cumulative seconds per phase of a batch: where the processor spends its time.
    seconds: dict[str, float] = field(
        default_factory=lambda: {"decode": 0.0, "prepare": 0.0, "write": 0.0, "ledger": 0.0, "live": 0.0, "commit": 0.0}
    )


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


@dataclass
class _Prepared:
    built: batching.Batch
    run_rows: list[Any]
    events: list[ValidatedEvent]
    status_changes: dict[RunKey, str]
    dead: list[tuple[Any, str]]
    commit: dict[TopicPartition, int]


def _split(data: dict[TopicPartition, list[Any]], budget: int) -> tuple[dict[TopicPartition, list[Any]], dict[TopicPartition, list[Any]]]:
    """A batch of at most `budget` bytes of record values (at least one record), taken
    round-robin from the partitions' heads so that none waits behind another's backlog,
    and the rest, each partition's records still in offset order."""
    taken = {tp: 0 for tp in data}
    size = 0
    progress = True
    while progress:
        progress = False
        for tp, messages in data.items():
            i = taken[tp]
            if i == len(messages):
                continue
            record = len(messages[i].value or b"")
            if size and size + record > budget:
                continue
            taken[tp] = i + 1
            size += record
            progress = True
    batch = {tp: messages[: taken[tp]] for tp, messages in data.items() if taken[tp]}
    rest = {tp: messages[taken[tp] :] for tp, messages in data.items() if taken[tp] < len(messages)}
    return batch, rest


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # The batch being prepared or written finishes and is committed by this owner
        # first; records polled but not yet prepared are dropped by the loop (it sees
        # the new epoch) and read again from where the assignment positions them.
        self.processor._revocations += 1
        async with self.processor._work_lock:
            await self.processor.wait_inflight()
            await self.processor.flush_commits()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.processor._load_watermarks(assigned)
        await self.processor._reposition(assigned)


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
        fail_injector: Any = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.group_id = group_id or settings.group_id
        self.publish_live = publish_live
        self.max_records = max_records
        self.batch_window = batch_window
        self.min_interval = min_interval
        self.loaded_interval = loaded_interval
        self.ledger_interval = ledger_interval
        self.max_batch_bytes = max_batch_bytes
        self._batch_started = 0.0
        self._last_points = 0
        self.stats = ProcessorStats()
        self.watermarks: batching.Watermarks = {t: {} for t in WATERMARKED_TABLES}
        # Keyed by (project, run id): a run id is unique only within its project.
        self.runs: OrderedDict[RunKey, RunState] = OrderedDict()
        self.seen_ids: dict[RunKey, SeenIds] = {}
        self._fail_injector = fail_injector
        self._work_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending_commit: dict[TopicPartition, int] = {}
        self._commit_task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._data_done: asyncio.Future[bool] | None = None  # the batch in flight has its data tables written
        self._data_ahead: asyncio.Future[bool] | None = None  # the same for the batch before it
        self._carry: dict[TopicPartition, list[Any]] = {}  # polled, not in a batch yet (see _split)
        self._carry_epoch = 0
        self._ledger_queue: list[tuple[_Prepared, asyncio.Future[bool]]] = []
        self._ledger_task: asyncio.Task[None] | None = None
        self._ledger_at = 0.0  # when the last ledger group started
        self._revocations = 0
        self._dead_lettered: dict[tuple[str, int], int] = {}  # highest offset sent to the dead-letter topic
        self._lag_at = 0.0
        self.ready = asyncio.Event()
        # Live updates also go straight to an api hub in this process (`runstream up`), which
        # then skips this processor's messages on the live topic: no JSON and Kafka round trip
        # on the way to its browsers. Other api instances read the topic as before.
        self.origin = uuid.uuid4().hex.encode()
        self.live_sinks: list[Callable[[list[LiveUpdate]], None]] = []

    # --- lifecycle ---
    async def start(self) -> None:
        await ensure_topics(self.settings)
        self._producer = kafka.processor_producer(self.settings)
        await self._producer.start()
        self._consumer = kafka.processor_consumer(self.settings, self.group_id)
        self._consumer.subscribe([self.settings.events_topic], listener=_Rebalance(self))
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="runstream-processor")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        try:
            await asyncio.wait_for(self.flush_commits(), 10)
        except Exception:
            pass
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def _run(self) -> None:
        """Poll, prepare, write, with the write of one batch overlapping the polling and
        preparing of the next: the insert runs in the store's thread (the engine releases
        the GIL), and the records that arrive meanwhile become the next, larger batch."""
        assert self._consumer is not None
        try:
            while not self._stopping.is_set():
                try:
                    await self._step()
                except Exception as exc:  # the loop must outlive any one batch: a dead loop in a live process consumes nothing
                    await self._recover(exc)
        finally:
            await self.wait_inflight()

    async def _step(self) -> None:
        assert self._consumer is not None
        epoch = self._revocations
        if self._carry and self._carry_epoch != epoch:  # polled before a rebalance
            async with self._work_lock:
                await self._reread()
            return
        if self._carry:
            # Records polled with the last batch that did not fit in it start this one.
            data, self._carry = self._carry, {}
        else:
            try:
                data = await self._consumer.getmany(timeout_ms=100, max_records=self.max_records)
            except Exception as exc:  # broker hiccups must not end the loop
                log.warning("poll failed: %s", exc)
                await asyncio.sleep(0.5)
                return
            if not data:
                if self._inflight is None or self._inflight.done():
                    self.ready.set()
                await self._update_lag()
                return
        data = await self._accumulate(data, epoch)
        if not data:
            return
        # At most one batch prepared ahead of the one being written: a backlog must not
        # be decoded into memory faster than the engine stores it.
        ahead = self._data_ahead
        if ahead is not None and not ahead.done():
            await asyncio.wait({ahead})
        async with self._work_lock:
            if self._revocations != epoch:  # a revocation won the lock: see _accumulate
                await self._reread()
                return
            prepared = await self._prepare(data)
            self._batch_started = time.monotonic()
            self._last_points = prepared.built.points
            previous, previous_data = self._inflight, self._data_done
            self._data_ahead = previous_data
            self._data_done = asyncio.get_running_loop().create_future()
            self._inflight = asyncio.create_task(self._finish(prepared, previous, previous_data, self._data_done))
        await self._update_lag()

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
                self.seen_ids.clear()
                await self._reread()
        except Exception as again:
            log.error("repositioning after a loop error failed (retried on the next error or rebalance): %r", again)

    async def _reread(self) -> None:
        """Drop what was polled but not prepared and, once the batch in flight is stored,
        read every assigned partition again from the first record not stored (call with
        the work lock held)."""
        self._carry = {}
        await self.wait_inflight()
        if self._consumer is not None:
            await self._reposition(self._consumer.assignment(), rewind=True)

    async def wait_inflight(self) -> None:
        task = self._inflight
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _accumulate(self, data: dict[TopicPartition, list[Any]], epoch: int) -> dict[TopicPartition, list[Any]]:
        """Grow the batch while the previous one is still being written, and until
        min_interval after the previous batch started (loaded_interval after a batch of
        LOADED_POINTS or more), unless the stream pauses for PAUSE_S: every batch costs a
        part in each table and its share of merges, tens of ms of engine CPU whatever its
        size, so fewer, larger batches leave the CPU to everything else. A live stream's
        batches start 100 ms apart (min_interval): back to back they came every ~40 ms, and
        their fixed costs (4 inserts each) kept the 2-core machine of bench/live.py busy;
        at 100 ms there are half as many and p50 latency dropped in each interleaved pair
        (141 -> 124, 180 -> 141 ms; p99 within the run-to-run noise). An idle pipeline
        that receives a record writes it after batch_window.

        A batch stops growing at max_batch_bytes of record values (what was polled
        beyond waits in _carry for the next one): the engine's insert of one block
        costs more per row above ~300,000 rows (1,000,000 rows in one insert: 0.8-0.9 s;
        in 4 of 250,000: 0.37-0.42 s). A full batch is prepared at once, while the
        previous one is still being written, so that the engine goes from one write to
        the next without waiting for Python."""
        assert self._consumer is not None
        count = sum(len(v) for v in data.values())
        size = sum(len(m.value or b"") for v in data.values() for m in v)
        interval = self.loaded_interval if self._last_points >= LOADED_POINTS else self.min_interval
        arrived = time.monotonic()  # when records last came in: a pause counts from there, also across a write
        deadline = max(arrived + self.batch_window, self._batch_started + interval)
        while count < self.max_records and size < self.max_batch_bytes:
            writing = self._data_done
            if writing is not None and not writing.done():
                if time.monotonic() - arrived >= PAUSE_S:
                    break  # the stream paused: prepare now, ready to go once the write ends
                # The consumer keeps fetching in the background; take what it has every
                # WRITE_POLL_S until the data tables are written or the batch is full.
                await asyncio.wait({writing}, timeout=WRITE_POLL_S)
                timeout_ms = 0
            else:
                now = time.monotonic()
                left = min(deadline - now, arrived + PAUSE_S - now)
                if left <= 0:
                    break
                timeout_ms = max(1, int(left * 1000))
            more = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_records - count)
            if not more:
                if timeout_ms == 0:
                    continue  # still writing, or the write just ended: wait on, up to the deadline or a pause
                break  # the deadline passed, or the stream paused: write what there is
            if self._revocations != epoch:
                break
            arrived = time.monotonic()
            for tp, messages in more.items():
                data.setdefault(tp, []).extend(messages)
                count += len(messages)
                size += sum(len(m.value or b"") for m in messages)
        if self._revocations != epoch:
            # A rebalance happened while this batch was being polled: some of it may
            # belong to another owner now, and which records came before the new
            # positions is unknowable. Drop it all and read again from the positions of
            # the current assignment, once the batch in flight is stored (its watermarks
            # then skip whatever the new positions replay).
            async with self._work_lock:
                await self._reread()
            return {}
        if size > self.max_batch_bytes:
            data, self._carry = _split(data, self.max_batch_bytes)
            self._carry_epoch = epoch
        return data

    async def _reposition(self, assigned: set[TopicPartition], *, rewind: bool = False) -> None:
        """Start each assigned partition at the first record this shard has not stored and
        no owner has committed: max(committed offset, own watermark + 1). With an engine
        per instance, another instance's writes show only in the committed offsets. A
        partition with neither starts at the consumer's reset (earliest); `rewind` seeks it
        there explicitly, for records already fetched from it and then dropped."""
        consumer = self._consumer
        if consumer is None:
            return
        for tp in assigned:
            try:
                committed = await consumer.committed(tp)
            except Exception as exc:  # the default position (committed or earliest) still applies
                log.warning("committed offset of %s unknown: %s", tp, exc)
                continue
            mark = self.watermarks["ingested_events"].get((tp.topic, tp.partition), -1)
            try:
                if committed is not None or mark >= 0:
                    consumer.seek(tp, max(committed or 0, mark + 1))
                elif rewind:
                    await consumer.seek_to_beginning(tp)
            except (IllegalStateError, AssertionError):
                # Revoked while its committed offset was read (a rebalance started): the
                # partition's next owner positions it. Raising here ended the loop.
                log.info("%s no longer assigned; not repositioned", tp)

    async def _update_lag(self) -> None:
        """Records behind the high-water marks, refreshed at most once a second (public
        consumer API only; position() returns at once for a partition being fetched)."""
        consumer = self._consumer
        now = time.monotonic()
        if consumer is None or now - self._lag_at < 1.0:
            return
        self._lag_at = now
        lag = 0
        for tp in list(consumer.assignment()):
            # A rebalance may revoke tp during the await: highwater() then asserts.
            try:
                high = consumer.highwater(tp)
                if high is None:
                    continue
                pos = await asyncio.wait_for(consumer.position(tp), 0.05)
            except Exception:  # reset or revoked meanwhile (highwater asserts): counted next time
                continue
            lag += max(0, high - pos)
        self.stats.consumer_lag = lag

    # --- watermarks and caches ---
    async def _load_watermarks(self, assigned: set[TopicPartition]) -> None:
        if not assigned:
            return
        parts = sorted({tp.partition for tp in assigned})
        topic = next(iter(assigned)).topic

        def load() -> dict[str, dict[tuple[str, int], int]]:
            out: dict[str, dict[tuple[str, int], int]] = {}
            for table in WATERMARKED_TABLES:
                rows = self.store.query_rows(
                    f"SELECT kafka_partition, max(kafka_offset) FROM {table} "
                    "WHERE kafka_topic = {t:String} AND kafka_partition IN {p:Array(UInt16)} GROUP BY kafka_partition",
                    {"t": topic, "p": parts},
                )
                out[table] = {(topic, int(p)): int(o) for p, o in rows}
            return out

        loaded = await self._with_retry(load, "load watermarks")
        for table, marks in loaded.items():
            for key in [k for k in self.watermarks[table] if k[0] == topic and k[1] in parts]:
                del self.watermarks[table][key]
            self.watermarks[table].update(marks)

    async def _load_runs(self, keys: set[RunKey]) -> None:
        missing = [k for k in keys if k not in self.runs]
        if not missing:
            return
        ids = sorted({run for _, run in missing})
        projects = sorted({project for project, _ in missing})

        def load() -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
            params = {"ids": ids, "projects": projects}
            where = "WHERE run_id IN {ids:Array(String)} AND project IN {projects:Array(String)}"
            rows = self.store.query_dicts(f"SELECT * FROM runs FINAL {where}", params)
            seen = self.store.query_rows(f"SELECT project, run_id, event_id FROM ingested_events {where}", params)
            return rows, seen

        rows, seen = await self._with_retry(load, "load runs")
        by_key = {(r["project"], r["run_id"]): r for r in rows}
        for project, run in missing:
            row = by_key.get((project, run))
            if row is None:
                state = RunState(project=project, run_id=run)
            else:
                state = RunState(
                    project=row["project"],
                    run_id=run,
                    experiment=row["experiment"],
                    name=row["name"],
                    parent_id=row["parent_id"],
                    status=row["status"],
                    error=row["error"],
                    created_at=row["created_at"].timestamp(),
                    ended_at=row["ended_at"].timestamp() if row["ended_at"] else None,
                    last_seen=row["last_seen"].timestamp(),
                    tags=dict(row["tags"]),
                    params=dict(row["params"]),
                    descriptions=dict(row["descriptions"]),
                )
                state.persisted_last_seen = state.last_seen
            self.runs[(project, run)] = state
            self.seen_ids.setdefault((project, run), SeenIds())
        wanted = set(missing)
        for project, run, event_id in seen:
            if (project, run) in wanted:
                self.seen_ids[(project, run)].add(event_id)
        while len(self.runs) > MAX_RUN_CACHE:
            old, _ = self.runs.popitem(last=False)
            self.seen_ids.pop(old, None)

    async def _with_retry(self, fn: Any, what: str, lane: int = 0) -> Any:
        delay = 0.1
        while True:
            try:
                if self._fail_injector is not None:
                    self._fail_injector(what)
                result = await self.store.call_write(fn, lane=lane)
                if not self.stats.clickhouse_ok:
                    log.warning("ClickHouse answers again; resuming")
                self.stats.clickhouse_ok = True
                return result
            except Exception as exc:
                self.stats.batches_retried += 1
                if self.stats.clickhouse_ok:
                    log.error("ClickHouse %s failed, retrying with back-off (offsets not committed): %s", what, exc)
                self.stats.clickhouse_ok = False
                self.stats.last_error = f"{what}: {exc}"[:500]
                if self._stopping.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- one batch ---
    async def _prepare(self, data: dict[TopicPartition, list[Any]]) -> _Prepared:
        """Decode, validate, dedupe and build the inserts; apply run-state changes.
        Caches (run state, seen ids) move forward here, before the write: the write is
        retried until it succeeds, and the next batch is prepared while it runs."""
        t0 = time.perf_counter()
        records: list[batching.Record] = []
        dead: list[tuple[Any, str]] = []
        commit: dict[TopicPartition, int] = {}
        ingested = self.watermarks["ingested_events"]
        for tp, messages in data.items():
            if not messages:
                continue
            commit[tp] = max(m.offset for m in messages) + 1
            done = ingested.get((tp.topic, tp.partition), -1)
            for msg in messages:
                self.stats.events_in += 1
                if msg.offset <= done:
                    self.stats.events_skipped += 1
                    continue
                try:
                    event = validate(decode(msg.value))
                except WireError as exc:
                    dead.append((msg, str(exc)))
                    continue
                except Exception as exc:  # a decoder bug must not stop the pipeline either
                    dead.append((msg, f"internal decode error: {exc!r}"))
                    continue
                records.append(batching.Record(tp.topic, tp.partition, msg.offset, event))

        t1 = time.perf_counter()
        await self._load_runs({(r.event.project, r.event.run) for r in records})
        # A re-sent event (same id at a new offset, e.g. a client spool replay) is dropped here.
        fresh: list[batching.Record] = []
        batch_ids: set[str] = set()
        for rec in records:
            eid = rec.event.id
            seen = self.seen_ids.get((rec.event.project, rec.event.run))
            if eid in batch_ids or (seen is not None and eid in seen):
                self.stats.events_skipped += 1
                continue
            batch_ids.add(eid)
            fresh.append(rec)

        built = batching.build(fresh, self.watermarks)
        status_changes: dict[RunKey, str] = {}
        for rec in fresh:
            ev = rec.event.fields
            key = (ev["project"], ev["run"])
            changed = apply(self.runs[key], ev)
            if changed:
                status_changes[key] = changed
        now_version = time.time_ns()
        dirty = [st for st in self.runs.values() if st.dirty]
        run_rows = [st.row(now_version) for st in dirty]
        for st in dirty:
            st.dirty = False
            st.persisted_last_seen = st.last_seen
        for rec in fresh:
            self.seen_ids.setdefault((rec.event.project, rec.event.run), SeenIds()).add(rec.event.id)
        t2 = time.perf_counter()
        self.stats.seconds["decode"] += t1 - t0
        self.stats.seconds["prepare"] += t2 - t1
        return _Prepared(built, run_rows, [r.event for r in fresh], status_changes, dead, commit)

    async def _finish(
        self, batch: _Prepared, previous: asyncio.Task[bool] | None, previous_data: asyncio.Future[bool] | None, data_done: asyncio.Future[bool]
    ) -> bool:
        """Write the data tables (after the previous batch's: a table's inserts stay in
        offset order, which its watermark relies on), publish the live update, then write
        the ledger (queued in data order, see _write_ledger) and commit after the previous
        batch. False when the batch was not written (stopping), and then no later batch
        writes or commits."""
        try:
            return await self._write_batch(batch, previous, previous_data, data_done)
        finally:
            if not data_done.done():  # never leave the next batch waiting
                data_done.set_result(False)

    async def _write_batch(
        self, batch: _Prepared, previous: asyncio.Task[bool] | None, previous_data: asyncio.Future[bool] | None, data_done: asyncio.Future[bool]
    ) -> bool:
        built = batch.built
        done_tables: set[str] = set()  # a retry after a partial failure resumes where it stopped

        def write(tables: tuple[str, ...]) -> None:
            for table in tables:
                if table in done_tables:
                    continue
                data_table = built.tables.get(table)
                if data_table is not None:
                    self.store.insert_arrow(table, data_table)
                done_tables.add(table)
                if data_table is not None:
                    self._advance(table, [built])

        t2 = time.perf_counter()
        try:
            if previous_data is not None and not await previous_data:
                data_done.set_result(False)
                return False
            # The data first: once points and log lines are stored the live update can go
            # out, while the summaries, the run rows and the ingested-events ledger are written.
            writing = asyncio.ensure_future(self._with_retry(lambda: write(DATA_TABLES), "insert batch", lane=0))
            # The update is built while the engine writes (on its own thread, without the GIL)
            # and sent once the write is done. One turn of the loop first: that is when the
            # task hands the insert to the writer thread.
            await asyncio.sleep(0)
            updates = self._live_updates(batch) if self.publish_live and batch.events else None
            await writing
        except Exception as exc:  # only when stopping: the batch stays uncommitted and is replayed
            log.warning("batch not written before stop (it will be replayed): %s", exc)
            data_done.set_result(False)
            return False
        data_done.set_result(True)
        t3 = time.perf_counter()
        self.stats.points_written += built.points  # stored and queryable now; the ledger is bookkeeping for replays
        live = asyncio.create_task(self._publish_live(updates)) if updates else None
        if not await self._write_ledger(batch):
            return False
        if previous is not None and not await previous:  # commits stay in batch order
            return False
        t3b = time.perf_counter()
        self.stats.batches += 1
        self.stats.events_written += built.events
        self.stats.events_skipped += built.skipped

        if batch.dead:
            try:
                await self._dead_letter(batch.dead)
            except Exception as exc:  # the events are logged with their reasons; keep the pipeline going
                log.error("dead-letter topic not written: %s", exc)
        if live is not None:
            await live
        t4 = time.perf_counter()
        self._schedule_commit(batch.commit)
        t5 = time.perf_counter()
        for phase, spent in (("write", t3 - t2), ("ledger", t3b - t3), ("live", t4 - t3b), ("commit", t5 - t4)):
            self.stats.seconds[phase] += spent
        return True

    def _advance(self, table: str, batches: list[batching.Batch]) -> None:
        marks = self.watermarks[table]
        for built in batches:
            for key, offset in built.high[table].items():
                marks[key] = max(marks.get(key, -1), offset)

    async def _write_ledger(self, batch: _Prepared) -> bool:
        """Queue the batch's ledger (summaries, run rows, ingested events) and wait until it
        is written. Batches queued while the ledger lane is busy, or within ledger_interval
        of the last ledger write, are written together, one insert per table: under a stream
        of small batches the fixed cost of an insert, not the rows, is what the lane spends
        its time on (bench/live.py, 10 batches a second: at most 5 ledger inserts a second
        instead of 10; p99 latency in interleaved pairs without / with 0.2 s: 246 -> 220,
        320 -> 268 ms). The points are stored and pushed live before; only summaries, run
        rows and the commit wait. False when stopping."""
        done = asyncio.get_running_loop().create_future()
        self._ledger_queue.append((batch, done))
        if self._ledger_task is None or self._ledger_task.done():
            self._ledger_task = asyncio.create_task(self._ledger_loop())
        return bool(await done)

    async def _ledger_loop(self) -> None:
        while self._ledger_queue:
            wait = self._ledger_at + self.ledger_interval - time.monotonic()
            if wait > 0 and not self._stopping.is_set():
                await asyncio.sleep(wait)
            self._ledger_at = time.monotonic()
            group, self._ledger_queue = self._ledger_queue, []
            try:
                await self._with_retry(functools.partial(self._write_ledger_group, [b for b, _ in group], set()), "insert batch", lane=1)
                ok = True
            except Exception as exc:  # only when stopping: these batches stay uncommitted and are replayed
                log.warning("batch ledger not written before stop (it will be replayed): %s", exc)
                ok = False
            for _, done in group:
                done.set_result(ok)
            if not ok:
                for _, done in self._ledger_queue:
                    done.set_result(False)
                self._ledger_queue = []
                return

    def _write_ledger_group(self, group: list[_Prepared], done_tables: set[str]) -> None:
        """One insert per ledger table for the group (in offset order: the data lane writes
        batches in order and each queues its ledger once its data is stored). done_tables:
        what an earlier try wrote, so that a retry resumes after it."""
        built = [b.built for b in group]
        for table in LEDGER_TABLES:
            if table in done_tables:
                continue
            if table == "ingested_events":
                # Runs go before ingested_events: an event found there has had every effect.
                self.store.insert_rows("runs", [row for b in group for row in b.run_rows], RUN_COLUMNS)
            parts = [b.tables[table] for b in built if table in b.tables]
            if parts:
                # One dictionary per column across the parts: the engine reads one Arrow file.
                data = parts[0] if len(parts) == 1 else pa.concat_tables(parts).unify_dictionaries().combine_chunks()
                self.store.insert_arrow(table, data)
            done_tables.add(table)
            self._advance(table, built)

    def _schedule_commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit in the background: the rows are already stored, and a replay of an
        uncommitted range is skipped by the watermarks, so the next poll need not wait."""
        self._pending_commit.update(offsets)
        if self._commit_task is None or self._commit_task.done():
            self._commit_task = asyncio.create_task(self._commit_loop())

    async def _commit_loop(self) -> None:
        assert self._consumer is not None
        while self._pending_commit:
            offsets, self._pending_commit = self._pending_commit, {}
            try:
                await self._consumer.commit(offsets)
            except Exception as exc:  # after a rebalance the new owner re-reads; watermarks skip what we wrote
                log.warning("offset commit failed (a replay will be skipped by watermarks): %s", exc)

    async def flush_commits(self) -> None:
        task = self._commit_task
        if task is not None:
            await task

    async def _dead_letter(self, dead: list[tuple[Any, str]]) -> None:
        """Quarantine refused records once per process: a batch re-read after a rebalance
        (or a loop error) meets them again, and no table's watermark covers them. A
        restart may send one again (at least once, as the DLQ's consumers are told)."""
        assert self._producer is not None
        for msg, reason in dead:
            key = (msg.topic, msg.partition)
            if msg.offset <= self._dead_lettered.get(key, -1):
                continue
            self.stats.dead_letters += 1
            log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)
            payload = orjson.dumps(
                {
                    "reason": reason,
                    "topic": msg.topic,
                    "partition": msg.partition,
                    "offset": msg.offset,
                    "key": msg.key.decode("utf-8", "replace") if msg.key else None,
                    "value_b64": base64.b64encode(msg.value or b"").decode(),
                    "at": time.time(),
                }
            )
            await self._producer.send_and_wait(self.settings.deadletter_topic, payload, key=msg.key)
            self._dead_lettered[key] = msg.offset  # once sent: a send that failed is tried again on a re-read

    def _live_updates(self, batch: _Prepared) -> list[LiveUpdate] | None:
        try:
            touched = {(e.project, e.run) for e in batch.events} | set(batch.status_changes)
            experiments = {key: self.runs[key].experiment for key in touched if key in self.runs}
            return build_updates(batch.events, experiments, batch.status_changes, batch.built.metric_groups)
        except Exception as exc:  # live pushes are best effort; storage is the truth
            log.warning("live update not built: %r", exc)
            return None

    async def _publish_live(self, updates: list[LiveUpdate]) -> None:
        assert self._producer is not None
        try:
            now = time.time()  # the updates were built before the write ended: stamp them as they go
            for update in updates:
                update["server_time"] = now
            # One message per batch: the per-message cost, not the bytes, is what adds latency.
            for sink in self.live_sinks:
                try:
                    sink(updates)
                except Exception as exc:  # a hub bug must not stop the pipeline
                    log.warning("local live update not delivered: %r", exc)
            payload = orjson.dumps({"type": "batch", "updates": updates})
            await self._producer.send(self.settings.live_topic, payload, headers=[(ORIGIN_HEADER, self.origin)])
            self.stats.live_messages += len(updates)
            self.stats.live_bytes += len(payload)
        except Exception as exc:  # live pushes are best effort; storage is the truth
            log.warning("live update not published: %s", exc)
