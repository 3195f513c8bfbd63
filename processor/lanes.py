"""The two write lanes of the store: a batch's data tables, then its ledger.

The data lane (writer lane 0) writes the points, tables, logs and files of one batch at
a time, in batch order: once they are stored the live update goes out. The ledger lane
(writer lane 1) then writes the metric summaries, the run rows and the ingested-events
ledger; batches queued while it is busy, or within `interval` of its last write, go
together, one insert per table: under a stream of small batches the fixed cost of an
insert, not its rows, is what the lane spends its time on. Only the summaries, the run
rows and the commit wait for it.

Each table's insert moves that table's watermark once it returns, so a retry after a
partial failure resumes after the last table written, and a replay after a crash writes
only what is missing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from runstream.processor import batch as batching
from runstream.processor.prepare import Prepared
from runstream.processor.retry import Retry
from runstream.processor.watermarks import Watermarks
from runstream.storage.schema import RUN_COLUMNS, WATERMARKED_TABLES

log = logging.getLogger("runstream.processor")

LEDGER_TABLES = ("metric_summaries", "ingested_events")
DATA_TABLES = tuple(t for t in WATERMARKED_TABLES if t not in LEDGER_TABLES)


class Writer(Protocol):
    def insert_arrow(self, table: str, data: pa.Table) -> None: ...

    def insert_rows(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None: ...


class DataLane:
    def __init__(self, store: Writer, watermarks: Watermarks, retry: Retry) -> None:
        self.store = store
        self.watermarks = watermarks
        self.retry = retry

    async def write(self, built: batching.Batch) -> None:
        """Store the batch's data tables (retried; raises only when stopping or on a non-transient error)."""
        done_tables: set[str] = set()  # a retry after a partial failure resumes where it stopped
        await self.retry(functools.partial(self._write, built, done_tables), "insert batch", lane=0)

    def _write(self, built: batching.Batch, done_tables: set[str]) -> None:
        for table in DATA_TABLES:
            if table in done_tables:
                continue
            data = built.tables.get(table)
            if data is not None:
                self.store.insert_arrow(table, data)
            done_tables.add(table)
            if data is not None:
                self.watermarks.advance(table, [built])


class LedgerLane:
    def __init__(
        self,
        store: Writer,
        watermarks: Watermarks,
        retry: Retry,
        stopping: asyncio.Event,
        interval: float,
    ) -> None:
        self.store = store
        self.watermarks = watermarks
        self.retry = retry
        self.stopping = stopping
        self.interval = interval
        self._queue: list[tuple[Prepared, asyncio.Future[bool]]] = []
        self._task: asyncio.Task[None] | None = None
        self._at = 0.0  # when the last ledger group started

    @property
    def queued(self) -> int:
        """Batches waiting for the lane (not counting the group being written)."""
        return len(self._queue)

    async def write(self, batch: Prepared) -> bool:
        """Queue the batch's ledger and wait until it is written (in queue order, which is
        data order: each batch queues its ledger once its data is stored). False when the
        ledger was not written (stopping, or a non-transient error): the batch stays
        uncommitted, as do the batches queued behind it."""
        done = asyncio.get_running_loop().create_future()
        self._queue.append((batch, done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        return bool(await done)

    async def _loop(self) -> None:
        while self._queue:
            wait = self._at + self.interval - time.monotonic()
            if wait > 0 and not self.stopping.is_set():
                await asyncio.sleep(wait)
            self._at = time.monotonic()
            group, self._queue = self._queue, []
            try:
                await self.retry(functools.partial(self.write_group, [b for b, _ in group], set()), "insert batch", lane=1)
                ok = True
            except Exception as exc:  # stopping or a non-transient error: these batches stay uncommitted and are replayed
                log.warning("batch ledger not written (it will be replayed): %s", exc)
                ok = False
            for _, done in group:
                done.set_result(ok)
            if not ok:
                for _, done in self._queue:
                    done.set_result(False)
                self._queue = []
                return

    def write_group(self, group: list[Prepared], done_tables: set[str]) -> None:
        """One insert per ledger table for the group, in offset order (runs in the writer
        thread). done_tables: what an earlier try wrote, so that a retry resumes after it."""
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
            self.watermarks.advance(table, built)
