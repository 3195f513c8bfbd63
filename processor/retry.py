"""Retrying the processor's ClickHouse calls: transient failures with back-off, others not at all.

Every call the processor makes to ClickHouse (the inserts, and the reads its bookkeeping
needs: watermarks, run state) runs through a StorageRetry, on one of the store's writer
lanes. The store reports a failure as a StorageError that says whether it is transient
(runstream.storage.store.is_transient); a test's fault injector may raise any exception,
classified the same way.

A transient failure (ClickHouse away, a timeout, too many parts, memory) is retried with
back-off, 0.1 s doubling up to 5 s, until it succeeds or the processor stops: the offsets
stay uncommitted meanwhile, so an outage of any length loses nothing.

A non-transient failure (a bad statement, a schema the code does not match, a bug in the
code that shapes an insert) fails the same way on every try, so it is tried once: it is
logged at ERROR with what was being done, counted (stats.fatal_storage_errors), and
handed to `on_fatal`, with which the processor stops its consume loop with that error
(`runstream processor` then exits non-zero). Stopping rather than skipping the batch or
retrying it a few times: skipping would commit offsets past records that are not stored,
which exactly-once rules out, and a bounded retry would only postpone the same failure.
Stopped, the batch stays in Kafka, uncommitted, for a fixed build or schema to write,
and whatever supervises the process sees the failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from runstream.errors import StorageError
from runstream.processor.stats import ProcessorStats
from runstream.storage.store import storage_error

log = logging.getLogger("runstream.processor")

T = TypeVar("T")
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0


class Retry(Protocol):
    """What the processor's parts call to run a ClickHouse call on a writer lane."""

    def __call__(self, fn: Callable[[], T], what: str, lane: int = 0) -> Awaitable[T]: ...


class WriterLanes(Protocol):
    def call_write(self, fn: Callable[[], T], *, lane: int = 0) -> Awaitable[T]: ...


class StorageRetry:
    def __init__(
        self,
        store: WriterLanes,
        stats: ProcessorStats,
        stopping: asyncio.Event,
        on_fatal: Callable[[StorageError], None],
        *,
        fail_injector: Callable[[str], Any] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.stats = stats
        self.stopping = stopping
        self.on_fatal = on_fatal
        self.fail_injector = fail_injector
        self.sleep = sleep

    async def __call__(self, fn: Callable[[], T], what: str, lane: int = 0) -> T:
        delay = FIRST_DELAY_S
        while True:
            try:
                if self.fail_injector is not None:
                    self.fail_injector(what)
                result = await self.store.call_write(fn, lane=lane)
            except Exception as exc:
                error = storage_error(exc)
                self.stats.last_error = f"{what}: {error}"[:500]
                if not error.transient:
                    self.stats.fatal_storage_errors += 1
                    self.stats.clickhouse_ok = False
                    log.error("ClickHouse %s failed with a non-transient error; stopping the processor (offsets not committed): %s", what, error)
                    self.on_fatal(error)
                    if error is exc:
                        raise
                    raise error from exc
                self.stats.batches_retried += 1
                if self.stats.clickhouse_ok:
                    log.error("ClickHouse %s failed, retrying with back-off (offsets not committed): %s", what, exc)
                self.stats.clickhouse_ok = False
                if self.stopping.is_set():
                    raise
                await self.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)
            else:
                if not self.stats.clickhouse_ok:
                    log.warning("ClickHouse answers again; resuming")
                self.stats.clickhouse_ok = True
                return result
