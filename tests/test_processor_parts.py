"""The processor's parts on their own, with fakes for Kafka and the store (no broker):
how storage errors are classified and retried, the batching policy, the commits, the
ledger's grouping, and the exit of a process whose processor failed for good."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from runstream.errors import StorageError
from runstream.processor import batch as batching
from runstream.processor.intake import LOADED_POINTS, PAUSE_S, Intake
from runstream.processor.lanes import LedgerLane
from runstream.processor.positions import Commits
from runstream.processor.prepare import Prepared
from runstream.processor.retry import StorageRetry
from runstream.processor.stats import ProcessorStats
from runstream.processor.watermarks import Watermarks
from runstream.server import _until_processor_fails
from runstream.storage.store import Store, is_transient, storage_error

TP0, TP1 = TopicPartition("ev", 0), TopicPartition("ev", 1)


# --- classification ---


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC 1",  # SYNTAX_ERROR
        "SELECT * FROM no_such_table_here",  # UNKNOWN_TABLE
        "SELECT toUInt8('x')",  # CANNOT_PARSE_TEXT
        "SELECT no_such_column FROM system.one",  # UNKNOWN_IDENTIFIER
    ],
)
def test_a_statement_that_cannot_succeed_raises_a_non_transient_storage_error(store: Store, sql: str) -> None:
    with pytest.raises(StorageError) as caught:
        store.query_rows(sql)
    assert not caught.value.transient and "Code: " in str(caught.value)
    assert isinstance(caught.value.__cause__, DatabaseError)


def test_limits_of_the_moment_raise_transient_storage_errors(store: Store) -> None:
    with pytest.raises(StorageError) as memory:
        store.query_rows("SELECT count() FROM numbers(10000000) GROUP BY number", settings={"max_memory_usage": 1_000_000})
    assert memory.value.transient and "Code: 241" in str(memory.value)  # MEMORY_LIMIT_EXCEEDED
    with pytest.raises(StorageError) as timeout:
        store.query_rows("SELECT sleepEachRow(0.05) FROM numbers(20) SETTINGS max_block_size = 1", settings={"max_execution_time": 0.2})
    assert timeout.value.transient and "Code: 159" in str(timeout.value)  # TIMEOUT_EXCEEDED
    # The next call on this thread answers: the query cut off mid-stream left the rest of its
    # answer in the embedded engine's connection, which failed the next query (IndexError).
    assert store.query_rows("SELECT number, toString(number) FROM numbers(3)") == [(0, "0"), (1, "1"), (2, "2")]


def test_a_server_that_does_not_answer_is_transient() -> None:
    import socket

    import clickhouse_connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OperationalError) as caught:  # nothing listens there: connection refused
        clickhouse_connect.get_client(host="127.0.0.1", port=port, connect_timeout=2)
    assert is_transient(caught.value)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (DatabaseError("Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)", code=252, name="TOO_MANY_PARTS"), True),
        (DatabaseError("Code: 242. DB::Exception: Table is in readonly mode. (TABLE_IS_READ_ONLY)", code=242), True),
        (DatabaseError("Code: 60. DB::Exception: Unknown table. (UNKNOWN_TABLE)", code=60), False),
        (DatabaseError("Code: 53. DB::Exception: Type mismatch. (TYPE_MISMATCH)", code=53), False),
        (RuntimeError("Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)"), True),  # chdb's own error
        (RuntimeError("Code: 62. DB::Exception: Syntax error. (SYNTAX_ERROR)"), False),
        (DatabaseError("HTTP driver received HTTP status 503, server response: Service Unavailable"), True),
        (DatabaseError("HTTP driver received HTTP status 403"), False),
        (ConnectionResetError("reset by peer"), True),
        (TimeoutError(), True),
        (TypeError("unsupported operand"), False),
        (KeyError("run_id"), False),
        (ValueError("invalid literal for int() with base 10: 'x'"), False),
        (RuntimeError("a bug"), False),
        (StorageError("as said", transient=True), True),
    ],
)
def test_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient
    assert storage_error(exc).transient is transient


def test_a_bug_in_a_writer_lane_call_is_a_non_transient_storage_error(store: Store) -> None:
    def shape_insert() -> None:
        {}["missing"]  # noqa: B018 - the bug

    with pytest.raises(StorageError) as caught:
        asyncio.run(store.call_write(shape_insert, lane=1))
    assert not caught.value.transient and isinstance(caught.value.__cause__, KeyError)


# --- retries ---


class _Lanes:
    """A store's writer lanes whose calls fail with `failures`, in turn, then run fn."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.attempts = 0

    async def call_write(self, fn: Callable[[], Any], *, lane: int = 0) -> Any:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        return fn()


def _retry(lanes: Any, **kwargs: Any) -> tuple[StorageRetry, list[float], list[StorageError]]:
    delays: list[float] = []
    fatal: list[StorageError] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    retry = StorageRetry(lanes, ProcessorStats(), asyncio.Event(), fatal.append, sleep=sleep, **kwargs)
    return retry, delays, fatal


def test_transient_failures_are_retried_with_back_off() -> None:
    lanes = _Lanes(StorageError("Code: 252. TOO_MANY_PARTS", transient=True), ConnectionError("away"), StorageError("timeout", transient=True))
    retry, delays, fatal = _retry(lanes)
    assert asyncio.run(retry(lambda: "stored", "insert batch")) == "stored"
    assert lanes.attempts == 4 and delays == [0.1, 0.2, 0.4] and not fatal
    assert retry.stats.batches_retried == 3 and retry.stats.clickhouse_ok and retry.stats.fatal_storage_errors == 0


def test_a_non_transient_failure_is_tried_once_counted_and_reported() -> None:
    error = StorageError("DatabaseError: Code: 60. DB::Exception: Unknown table", transient=False)
    lanes = _Lanes(error, error, error)
    retry, delays, fatal = _retry(lanes)
    with pytest.raises(StorageError) as caught:
        asyncio.run(retry(lambda: "stored", "insert batch"))
    assert caught.value is error and lanes.attempts == 1 and delays == [] and fatal == [error]
    stats = retry.stats
    assert stats.fatal_storage_errors == 1 and stats.batches_retried == 0 and not stats.clickhouse_ok
    assert stats.last_error.startswith("insert batch: ") and "Unknown table" in stats.last_error


def test_a_bug_raised_by_the_call_is_not_retried(store: Store) -> None:
    """Through the real store's writer lane: the TypeError comes back non-transient."""
    calls = []

    def buggy() -> None:
        calls.append(1)
        raise TypeError("'NoneType' object is not subscriptable")

    retry, delays, fatal = _retry(store)
    with pytest.raises(StorageError):
        asyncio.run(retry(buggy, "insert batch", lane=1))
    assert calls == [1] and delays == [] and len(fatal) == 1 and not fatal[0].transient


def test_the_fault_injector_of_the_tests_raises_transient_failures() -> None:
    left = {"n": 2}

    def inject(what: str) -> None:
        if what == "insert batch" and left["n"]:
            left["n"] -= 1
            raise ConnectionError("injected ClickHouse failure")

    lanes = _Lanes()
    retry, delays, fatal = _retry(lanes, fail_injector=inject)
    assert asyncio.run(retry(lambda: 1, "insert batch")) == 1
    assert lanes.attempts == 1 and delays == [0.1, 0.2] and not fatal


def test_a_transient_failure_while_stopping_gives_up() -> None:
    lanes = _Lanes(ConnectionError("away"), ConnectionError("away"))
    retry, delays, fatal = _retry(lanes)
    retry.stopping.set()
    with pytest.raises(ConnectionError):
        asyncio.run(retry(lambda: 1, "insert batch"))
    assert lanes.attempts == 1 and delays == [] and not fatal


def test_a_processor_failed_for_good_ends_the_process_with_its_error() -> None:
    class _Failed:
        async def wait_closed(self) -> None:
            await asyncio.sleep(0)
            raise StorageError("Code: 60. Unknown table", transient=False)

    async def main() -> None:
        signal = asyncio.Event()
        await _until_processor_fails(signal.wait(), _Failed(), signal.set)

    with pytest.raises(StorageError, match="Unknown table"):
        asyncio.run(main())


# --- the batching policy ---


@dataclass
class Msg:
    offset: int
    value: bytes


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Consumer:
    """Records that arrive at given times; a poll waits for the next one up to its timeout (on the fake clock)."""

    def __init__(self, clock: _Clock, arrivals: list[tuple[float, dict[TopicPartition, list[Msg]]]]) -> None:
        self.clock = clock
        self.arrivals = arrivals
        self.timeouts: list[int] = []

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Msg]]:
        self.timeouts.append(timeout_ms)
        until = self.clock.now + timeout_ms / 1000
        if self.arrivals and self.arrivals[0][0] <= until:
            at, records = self.arrivals.pop(0)
            self.clock.now = max(self.clock.now, at)
            return records
        self.clock.now = until
        return {}


def _stream(every: float, n: int, size: int = 10, start: float = 0.0) -> list[tuple[float, dict[TopicPartition, list[Msg]]]]:
    return [(start + every * (i + 1), {TP0: [Msg(i, b"x" * size)]}) for i in range(n)]


def _intake(consumer: _Consumer, clock: _Clock, epoch: Callable[[], int] = lambda: 0, **kwargs: Any) -> Intake:
    return Intake(consumer, epoch, clock=clock, **kwargs)


def _offsets(data: dict[TopicPartition, list[Msg]]) -> list[int]:
    return [m.offset for m in data.get(TP0, [])]


def test_an_idle_pipeline_writes_a_record_after_the_batch_window() -> None:
    clock = _Clock()
    consumer = _Consumer(clock, [])
    intake = _intake(consumer, clock, batch_window=0.005)
    data = asyncio.run(intake.grow({TP0: [Msg(0, b"x")]}, 0, None))
    assert data is not None and _offsets(data) == [0]
    assert consumer.timeouts == [5] and clock.now == pytest.approx(0.005)


def test_a_live_stream_is_batched_until_min_interval_after_the_previous_batch() -> None:
    clock = _Clock()
    consumer = _Consumer(clock, _stream(0.01, 50, start=0.005))  # a record every 10 ms, never a pause
    intake = _intake(consumer, clock, min_interval=0.1)
    intake.started(points=100)  # the previous batch started at 0
    data = asyncio.run(intake.grow({TP0: [Msg(-1, b"x")]}, 0, None))
    assert data is not None and clock.now == pytest.approx(0.1)
    assert _offsets(data) == list(range(-1, 9))  # what came until 100 ms after the previous batch began


def test_after_a_loaded_batch_the_next_one_waits_for_the_loaded_interval() -> None:
    clock = _Clock()
    consumer = _Consumer(clock, _stream(0.01, 50, start=0.005))
    intake = _intake(consumer, clock, min_interval=0.1, loaded_interval=0.25)
    intake.started(points=LOADED_POINTS)
    data = asyncio.run(intake.grow({TP0: [Msg(-1, b"x")]}, 0, None))
    assert data is not None and clock.now == pytest.approx(0.25) and _offsets(data) == list(range(-1, 24))


def test_a_pause_in_the_stream_ends_the_batch_before_the_interval() -> None:
    clock = _Clock()
    consumer = _Consumer(clock, [*_stream(0.01, 3), (0.5, {TP0: [Msg(99, b"x")]})])  # three records, then quiet
    intake = _intake(consumer, clock, min_interval=1.0)
    intake.started(points=100)
    data = asyncio.run(intake.grow({TP0: [Msg(-1, b"x")]}, 0, None))
    assert data is not None and _offsets(data) == [-1, 0, 1, 2]
    assert clock.now == pytest.approx(0.03 + PAUSE_S)  # PAUSE_S after the last record, not the 1 s interval


def test_a_batch_stops_at_max_batch_bytes_and_the_rest_starts_the_next() -> None:
    clock = _Clock()
    consumer = _Consumer(clock, [])
    epoch = {"n": 3}
    intake = _intake(consumer, clock, lambda: epoch["n"], max_batch_bytes=250)
    polled = {TP0: [Msg(i, b"x" * 100) for i in range(5)]}
    data = asyncio.run(intake.grow(polled, 3, None))
    assert data is not None and _offsets(data) == [0, 1] and consumer.timeouts == []  # full at once: no more polling
    assert not intake.stale(3) and intake.stale(4)  # the carry belongs to this epoch
    assert _offsets(asyncio.run(intake.first())) == [2, 3, 4] and intake.carry == {}


def test_a_batch_grown_across_a_rebalance_is_given_up() -> None:
    clock = _Clock()
    epoch = {"n": 0}
    arrivals = _stream(0.01, 5)

    class _Rebalancing(_Consumer):
        async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Msg]]:
            epoch["n"] = 1  # a revocation while this poll waited
            return await super().getmany(timeout_ms=timeout_ms, max_records=max_records)

    intake = _intake(_Rebalancing(clock, arrivals), clock, lambda: epoch["n"], min_interval=0.1)
    intake.started(points=1)
    assert asyncio.run(intake.grow({TP0: [Msg(-1, b"x")]}, 0, None)) is None


# --- commits ---


def test_commits_scheduled_while_one_is_in_flight_go_together_with_the_latest_offsets() -> None:
    class _Committer:
        def __init__(self) -> None:
            self.commits: list[dict[TopicPartition, int]] = []
            self.release = asyncio.Event()

        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            self.commits.append(dict(offsets))
            if len(self.commits) == 1:
                await self.release.wait()
            if len(self.commits) == 2:
                raise ConnectionError("coordinator moved")  # logged; later commits still go

    async def main() -> _Committer:
        committer = _Committer()
        commits = Commits(committer)
        commits.schedule({TP0: 5})
        await asyncio.sleep(0)  # the first commit is in flight
        commits.schedule({TP0: 7, TP1: 3})
        commits.schedule({TP0: 9})
        committer.release.set()
        await commits.flush()
        commits.schedule({TP1: 4})
        await commits.flush()
        return committer

    committer = asyncio.run(main())
    assert committer.commits == [{TP0: 5}, {TP0: 9, TP1: 3}, {TP1: 4}]


# --- the ledger lane ---


class _Writes:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int]] = []

    def insert_arrow(self, table: str, data: Any) -> None:
        self.rows.append((table, data.num_rows))

    def insert_rows(self, table: str, rows: Any, columns: Any) -> None:
        self.rows.append((table, len(rows)))

    def query_rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return []


def test_ledgers_queued_while_the_lane_writes_go_together_in_order() -> None:
    store = _Writes()
    groups: list[int] = []
    first_started = asyncio.Event()
    release = asyncio.Event()

    async def retry(fn: Callable[[], Any], what: str, lane: int = 0) -> Any:
        if not groups:
            groups.append(0)
            first_started.set()
            await release.wait()
        return fn()

    def prepared(rows: int) -> Prepared:
        return Prepared(batching.Batch(), [["row"]] * rows, [], {}, [], {})

    async def main() -> list[bool]:
        lane = LedgerLane(store, Watermarks(store, retry), retry, asyncio.Event(), interval=0.0)
        sizes: list[int] = []
        write_group = lane.write_group
        lane.write_group = lambda group, done: (sizes.append(len(group)), write_group(group, done))[1]  # type: ignore[method-assign]
        first = asyncio.ensure_future(lane.write(prepared(1)))
        await first_started.wait()
        behind = [asyncio.ensure_future(lane.write(prepared(n))) for n in (2, 3)]
        await asyncio.sleep(0)
        assert lane.queued == 2
        release.set()
        done = await asyncio.gather(first, *behind)
        assert sizes == [1, 2] and lane.queued == 0
        return list(done)

    assert asyncio.run(main()) == [True, True, True]
    assert store.rows == [("runs", 1), ("runs", 5)]  # one insert for the two queued batches
