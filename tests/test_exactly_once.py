"""Redelivery and restarts: every table ends with exactly one copy of each point."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from runstream import Experiment, kafka
from runstream.config import Settings
from runstream.errors import StorageError
from runstream.processor.consumer import Processor
from runstream.processor.prepare import Preparer
from runstream.storage.schema import WATERMARKED_TABLES
from runstream.storage.store import Store
from tests.conftest import Stack, new_settings, wait_until


def _snapshot(store: Store, topic: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for table in WATERMARKED_TABLES:
        out[table] = tuple(store.query_rows(f"SELECT count(), sum(cityHash64(*)) FROM {table} WHERE kafka_topic = {{t:String}}", {"t": topic})[0])
    out["metric_summaries"] = tuple(
        store.query_rows(
            "SELECT count(), sum(c) FROM (SELECT run_id, metric, sum(count_state) AS c FROM metric_summaries "
            "WHERE run_id IN (SELECT run_id FROM ingested_events WHERE kafka_topic = {t:String}) GROUP BY run_id, metric)",
            {"t": topic},
        )[0]
    )
    return out


def _log_runs(settings: Settings, runs: int, steps: int, prefix: str) -> list[str]:
    exp = Experiment(f"exactly-once-{prefix}", settings=settings)
    ids = []
    for r in range(runs):
        run = exp.start_logging(name=f"{prefix}-{r}")
        for s in range(steps):
            run.log_metrics({"loss": 1.0 / (s + 1), "acc": s / steps}, step=s)
        run.log_table("tbl", {"x": [1, 2, 3], "y": [4.0, 5.0, 6.0]})
        run.log_text("stdout", f"run {r} done")
        run.complete()
        ids.append(run.id)
    return ids


def _points(store: Store, ids: list[str]) -> int:
    return int(store.query_rows("SELECT count() FROM metric_points WHERE run_id IN {ids:Array(String)}", {"ids": ids})[0][0])


def _ends(stack: Stack, consumer: Any, settings: Settings) -> dict[int, int]:
    """Each partition's end offset, from the broker (not the high-water mark of a fetch)."""
    tps = [TopicPartition(settings.events_topic, p) for p in range(settings.partitions)]
    return {tp.partition: offset for tp, offset in stack.run(consumer.end_offsets(tps)).items()}


def _ledger_ends(store: Store, topic: str) -> dict[int, int]:
    """Each partition's offset after the last record the ledger holds."""
    rows = store.query_rows(
        "SELECT kafka_partition, max(kafka_offset) + 1 FROM ingested_events WHERE kafka_topic = {t:String} GROUP BY kafka_partition", {"t": topic}
    )
    return {int(p): int(o) for p, o in rows}


def test_consuming_the_same_range_twice_changes_nothing(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    """The whole topic delivered again to a processor sharing the store: every record is
    skipped by the watermarks, and no table changes."""
    settings = new_settings(home, kafka_bootstrap)
    first = Processor(settings, store, group_id=f"g-first-{uuid.uuid4().hex[:6]}", publish_live=False)
    stack.run(first.start())
    try:
        ids = _log_runs(settings, runs=5, steps=2000, prefix="redeliver")
        wait_until(lambda: _points(store, ids) == 5 * 2000 * 2, 60, what="first pass")
        ends = {p: n for p, n in _ends(stack, first.parts.consumer, settings).items() if n}
        wait_until(lambda: _ledger_ends(store, settings.events_topic) == ends, 60, what=f"every record of the topic stored ({ends})")
    finally:
        stack.run(first.stop())
    before = _snapshot(store, settings.events_topic)
    assert before["metric_points"][0] == 20_000
    records = sum(ends.values())

    # A processor of a new group with the same store positions each partition after its
    # stored range (the watermarks), so the broker would deliver nothing again. Make it:
    # every seek of its consumer (the repositioning on the assignment, and any reread)
    # goes to the partition's first offset instead, the redelivery of a lost commit.
    async def redelivering() -> Any:
        consumer = kafka.processor_consumer(settings, f"g-second-{uuid.uuid4().hex[:6]}")
        consumer.seek = lambda tp, offset: AIOKafkaConsumer.seek(consumer, tp, 0)  # type: ignore[method-assign]
        return consumer

    second = Processor(settings, store, publish_live=False, consumer=stack.run(redelivering()))
    stack.run(second.start())
    try:
        assert _ends(stack, second.parts.consumer, settings) == {p: ends.get(p, 0) for p in range(settings.partitions)}
        # Records polled before the assignment's repositioning are dropped unprepared, so
        # each record is counted once, from the last seek.
        wait_until(lambda: second.stats.events_in >= records, 60, what=f"the {records} records of the topic delivered again")
        stack.run(second.wait_inflight())
    finally:
        stack.run(second.stop())
    assert second.stats.events_in == records
    assert second.stats.events_skipped == records
    assert second.stats.events_written == 0 and second.stats.points_written == 0 and second.stats.dead_letters == 0
    assert _snapshot(store, settings.events_topic) == before


def test_partial_write_then_replay_writes_only_what_is_missing(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    """A crash after some tables were written: the replay fills in the rest without duplicates."""
    settings = new_settings(home, kafka_bootstrap)
    failures = {"left": 1}

    def fail_once(what: str) -> None:
        if what == "insert batch" and failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("injected ClickHouse failure")

    proc = Processor(settings, store, group_id="g-partial", publish_live=False, fail_injector=fail_once)
    stack.run(proc.start())
    try:
        ids = _log_runs(settings, runs=3, steps=500, prefix="partial")
        wait_until(lambda: _points(store, ids) == 3 * 500 * 2, 60, what="points after injected failure")
        wait_until(lambda: proc.stats.clickhouse_ok and proc.stats.batches >= 1, 30, what="processor healthy again")
        assert proc.stats.batches_retried >= 1
    finally:
        stack.run(proc.stop())
    rows = store.query_rows("SELECT uniqExact(run_id, metric, step), count() FROM metric_points WHERE run_id IN {ids:Array(String)}", {"ids": ids})
    assert rows == [(3000, 3000)]


def test_processor_stopped_and_restarted_mid_stream_loses_nothing(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    settings = new_settings(home, kafka_bootstrap)
    group = f"g-restart-{uuid.uuid4().hex[:6]}"
    exp = Experiment("restart", settings=settings)
    runs = [exp.start_logging(name=f"restart-{i}") for i in range(4)]
    proc = Processor(settings, store, group_id=group, publish_live=False)
    stack.run(proc.start())
    for step in range(3000):
        for run in runs:
            run.log("loss", float(step), step=step)
        if step == 1000:
            for run in runs:
                run.flush()
            wait_until(lambda p=proc: p.stats.points_written > 0, 30, what="first writes")
            stack.run(proc.stop())  # mid-stream: later points pile up in Kafka
        if step == 2000:
            proc = Processor(settings, store, group_id=group, publish_live=False)
            stack.run(proc.start())
    for run in runs:
        run.complete()
    ids = [r.id for r in runs]
    try:
        wait_until(lambda: _points(store, ids) == 4 * 3000, 60, what="all points after restart")
    finally:
        stack.run(proc.stop())
    assert store.query_rows(
        "SELECT uniqExact(run_id, step), count(), sum(value) FROM metric_points WHERE run_id IN {ids:Array(String)}", {"ids": ids}
    ) == [(12000, 12000, 4 * sum(range(3000)))]


def test_repositioning_a_partition_revoked_meanwhile_does_not_end_the_loop(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    """A rebalance can revoke a partition while its committed offset is read: the seek then
    raised and ended the consumer loop, leaving a live process that consumed nothing."""
    settings = new_settings(home, kafka_bootstrap)
    proc = Processor(settings, store, group_id=f"g-revoked-{uuid.uuid4().hex[:6]}", publish_live=False)
    stack.run(proc.start())
    try:
        ids = _log_runs(settings, runs=1, steps=100, prefix="revoked")
        wait_until(lambda: _points(store, ids) == 200, 60, what="points before the stale reposition")
        gone = TopicPartition(settings.events_topic, settings.partitions + 3)  # never assigned to this member
        proc.watermarks.tables["ingested_events"][(gone.topic, gone.partition)] = 5  # a stored offset: the seek is attempted
        stack.run(proc.parts.positions.reposition({gone}))
        ids += _log_runs(settings, runs=1, steps=100, prefix="revoked-after")
        wait_until(lambda: _points(store, ids) == 400, 60, what="points after the stale reposition")
    finally:
        stack.run(proc.stop())


def test_an_unexpected_error_in_the_loop_drops_nothing_and_writes_nothing_twice(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    settings = new_settings(home, kafka_bootstrap)
    proc = Processor(settings, store, group_id=f"g-loop-{uuid.uuid4().hex[:6]}", publish_live=False)
    failures = {"left": 2}

    class FlakyPreparer:
        def __init__(self, real: Preparer) -> None:
            self.real = real

        async def prepare(self, data: Any) -> Any:
            if failures["left"]:
                failures["left"] -= 1
                raise RuntimeError("injected loop failure")
            return await self.real.prepare(data)

    proc.preparer = FlakyPreparer(proc.preparer)  # type: ignore[assignment]
    stack.run(proc.start())
    try:
        ids = _log_runs(settings, runs=3, steps=500, prefix="loop-error")
        wait_until(lambda: _points(store, ids) >= 3 * 500 * 2, 60, what="points after injected loop failures")
        wait_until(lambda: proc.stats.consumer_lag == 0, 30, what="processor caught up")
        assert failures["left"] == 0 and "injected loop failure" in proc.stats.last_error
        assert proc.running
    finally:
        stack.run(proc.stop())
    rows = store.query_rows("SELECT uniqExact(run_id, metric, step), count() FROM metric_points WHERE run_id IN {ids:Array(String)}", {"ids": ids})
    assert rows == [(3000, 3000)]
    assert store.query_rows("SELECT count() FROM runs FINAL WHERE run_id IN {ids:Array(String)} AND status = 'Completed'", {"ids": ids}) == [(3,)]


def test_a_backlog_is_written_in_batches_of_bounded_size_each_point_once(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    settings = new_settings(home, kafka_bootstrap)
    exp = Experiment("backlog", settings=settings)
    runs = [exp.start_logging(name=f"backlog-{i}") for i in range(4)]
    for step in range(2000):
        for run in runs:
            run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 2000}, step=step)
        if step % 100 == 99:
            for run in runs:
                assert run.flush(30)  # many records of ~100 rows: the backlog the processor finds
    ids = [r.id for r in runs]
    polled = 0
    proc = Processor(settings, store, group_id=f"g-backlog-{uuid.uuid4().hex[:6]}", publish_live=False, max_batch_bytes=16_000)
    stack.run(proc.start())
    try:
        wait_until(lambda: _points(store, ids) >= 4 * 2000 * 2, 60, what="the backlog written")
        polled = proc.stats.batches
    finally:
        stack.run(proc.stop())
    # 80 records of ~1-2 KB under a 16 KB cap: several per batch, and far more than one batch.
    assert polled >= 5, polled
    rows = store.query_rows("SELECT uniqExact(run_id, metric, step), count() FROM metric_points WHERE run_id IN {ids:Array(String)}", {"ids": ids})
    assert rows == [(16_000, 16_000)]
    for run in runs:
        run.complete()


def _ledgers_in_small_batches(settings: Settings, store: Store, stack: Stack, proc: Processor, name: str, n_runs: int, steps: int) -> None:
    """Many small batches (a flush every 10 steps) through proc; then every point, event,
    summary and run row stored exactly once."""
    stack.run(proc.start())
    try:
        exp = Experiment(name, settings=settings)
        runs = [exp.start_logging(name=f"{name}-{i}") for i in range(n_runs)]
        for step in range(steps):
            for run in runs:
                run.log("loss", float(step), step=step)
            if step % 10 == 9:
                for run in runs:
                    assert run.flush(30)
        for run in runs:
            run.complete()
        ids = [r.id for r in runs]
        params = {"ids": ids}
        wait_until(lambda: _points(store, ids) == n_runs * steps, 60, what="points written")

        def ended() -> int:
            return int(store.query_rows("SELECT count() FROM runs FINAL WHERE run_id IN {ids:Array(String)} AND status = 'Completed'", params)[0][0])

        # The runs' end events come after their last points: wait for what is asserted below (the
        # consumer lag is refreshed once a second, so "lag 0" could still be the time before them).
        wait_until(lambda: ended() == n_runs and proc.ledger.queued == 0, 30, what="run ends stored, ledger drained")
    finally:
        stack.run(proc.stop())
    assert store.query_rows("SELECT uniqExact(run_id, step), count() FROM metric_points WHERE run_id IN {ids:Array(String)}", params) == [
        (n_runs * steps, n_runs * steps)
    ]
    events = store.query_rows("SELECT count(), uniqExact(event_id) FROM ingested_events WHERE run_id IN {ids:Array(String)}", params)
    assert events[0][0] == events[0][1] > steps // 10
    summaries = store.query_rows(
        "SELECT run_id, sum(count_state), tupleElement(max(last_state), 2) FROM metric_summaries WHERE run_id IN {ids:Array(String)} GROUP BY run_id",
        params,
    )
    assert sorted(r[1:] for r in summaries) == [(steps, float(steps - 1))] * n_runs
    assert store.query_rows("SELECT count() FROM runs FINAL WHERE run_id IN {ids:Array(String)} AND status = 'Completed'", params) == [(n_runs,)]


def test_ledgers_queued_behind_a_slow_one_are_written_together_each_event_once(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    settings = new_settings(home, kafka_bootstrap)
    proc = Processor(settings, store, group_id=f"g-ledger-{uuid.uuid4().hex[:6]}", publish_live=False)
    write_group = proc.ledger.write_group
    sizes: list[int] = []

    def slow_group(group: list[Any], done_tables: set[str]) -> None:
        sizes.append(len(group))
        if len(sizes) <= 3:
            time.sleep(0.3)  # a busy ledger lane: the batches behind it queue up
        write_group(group, done_tables)

    proc.ledger.write_group = slow_group  # type: ignore[method-assign]
    _ledgers_in_small_batches(settings, store, stack, proc, "ledger-groups", 3, 300)
    assert max(sizes) > 1, sizes  # some ledgers were written together


def test_ledgers_within_the_ledger_interval_are_written_together_each_event_once(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    settings = new_settings(home, kafka_bootstrap)
    proc = Processor(settings, store, group_id=f"g-interval-{uuid.uuid4().hex[:6]}", publish_live=False, ledger_interval=0.5)
    write_group = proc.ledger.write_group
    groups: list[tuple[float, int]] = []

    def timed_group(group: list[Any], done_tables: set[str]) -> None:
        groups.append((time.monotonic(), len(group)))
        write_group(group, done_tables)

    proc.ledger.write_group = timed_group  # type: ignore[method-assign]
    _ledgers_in_small_batches(settings, store, stack, proc, "ledger-interval", 2, 200)  # a batch every few ms
    starts = [t for t, _ in groups]
    assert all(b - a >= 0.49 for a, b in zip(starts, starts[1:])), starts  # at most one ledger write per interval
    assert max(n for _, n in groups) > 1, groups


def test_a_non_transient_storage_error_stops_the_processor_and_a_restart_writes_every_point_once(
    home, kafka_bootstrap: str, store: Store, stack: Stack
) -> None:
    """A failure that would fail the same way on every try (here a schema the code does not
    match) is tried once, ends the consume loop with that error, and commits nothing."""
    settings = new_settings(home, kafka_bootstrap)
    group = f"g-fatal-{uuid.uuid4().hex[:6]}"
    attempts = {"n": 0}

    def schema_mismatch(what: str) -> None:
        if what == "insert batch":
            attempts["n"] += 1
            raise StorageError("DatabaseError: Code: 16. DB::Exception: No such column in table. (NO_SUCH_COLUMN_IN_TABLE)", transient=False)

    ids = _log_runs(settings, runs=2, steps=300, prefix="fatal")  # waiting in Kafka
    proc = Processor(settings, store, group_id=group, publish_live=False, fail_injector=schema_mismatch)
    stack.run(proc.start())
    try:
        with pytest.raises(StorageError, match="NO_SUCH_COLUMN_IN_TABLE"):
            stack.run(proc.wait_closed(), 60)
        assert not proc.running and proc.failure is not None and not proc.failure.transient
        assert attempts["n"] == 1 and proc.stats.fatal_storage_errors == 1 and proc.stats.batches_retried == 0
        assert proc.stats.batches == 0 and _points(store, ids) == 0
    finally:
        stack.run(proc.stop())
    proc = Processor(settings, store, group_id=group, publish_live=False)  # the fixed build, same group
    stack.run(proc.start())
    try:
        wait_until(lambda: _points(store, ids) == 2 * 300 * 2, 60, what="every point after the restart")
        wait_until(lambda: proc.stats.consumer_lag == 0 and proc.ledger.queued == 0, 30, what="processor idle")
    finally:
        stack.run(proc.stop())
    rows = store.query_rows("SELECT uniqExact(run_id, metric, step), count() FROM metric_points WHERE run_id IN {ids:Array(String)}", {"ids": ids})
    assert rows == [(1200, 1200)]
    assert store.query_rows("SELECT count() FROM runs FINAL WHERE run_id IN {ids:Array(String)} AND status = 'Completed'", {"ids": ids}) == [(2,)]
