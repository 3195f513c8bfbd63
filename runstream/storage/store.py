"""The ClickHouse connection: one clickhouse-connect client per thread, both DSN kinds.

`chdb://PATH` runs the embedded engine in this process; `http(s)://` talks to a
server. The embedded engine refuses clickhouse-connect's async client, so calls
run on worker threads, each with its own connection (chdb allows many handles
to the one engine a process can host, and runs their queries in parallel).
Writes have a thread of their own: a dashboard's reads never queue in front of
the processor's inserts. One process-wide Store per DSN, shared by processor and api.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlparse

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from runstream.storage.schema import migrate

T = TypeVar("T")

_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()


def _make_client(dsn: str) -> Client:
    if dsn.startswith("chdb://"):
        path = dsn[len("chdb://") :]
        if path:
            import os

            os.makedirs(path, exist_ok=True)
        return clickhouse_connect.get_client(dsn=dsn)
    parsed = urlparse(dsn)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"RUNSTREAM_CLICKHOUSE must be chdb://PATH or http(s)://...; got {dsn!r}")
    # A server client shared across threads must not pin one session.
    return clickhouse_connect.get_client(dsn=dsn, autogenerate_session_id=False)


class Store:
    """Serialises access to one ClickHouse client and runs it off the event loop."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.embedded = dsn.startswith("chdb://")
        self._executor = ThreadPoolExecutor(max_workers=2 if self.embedded else 4, thread_name_prefix="clickhouse-read")
        # Two single-thread lanes: a batch's data tables on one, the previous batch's
        # ledger (runs, ingested_events) on the other, each in order.
        self._writers = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clickhouse-write{i}") for i in range(2)]
        self._local = threading.local()
        migrate(self.client())

    def client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = _make_client(self.dsn)
            self._local.client = client
        return client

    # --- sync API (call from the worker thread, or from scripts and tests) ---
    def query_rows(self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        rows: Any = self.client().query(sql, parameters=params, settings=settings).result_rows
        return [tuple(r) for r in rows]

    def query_dicts(self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self.client().query(sql, parameters=params, settings=settings)
        names = result.column_names
        return [dict(zip(names, row)) for row in result.result_rows]

    def command(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.client().command(sql, parameters=params)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        if data.num_rows:
            self.client().insert_arrow(table, data)

    def insert_rows(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        if rows:
            self.client().insert(table, [tuple(r) for r in rows], column_names=list(columns))

    # --- async API ---
    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def call_write(self, fn: Callable[..., T], *args: Any, lane: int = 0, **kwargs: Any) -> T:
        """Run fn on a writer lane (one thread each, calls in order): the processor's inserts and its own reads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writers[lane], lambda: fn(*args, **kwargs))

    async def aquery_dicts(self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self.call(self.query_dicts, sql, params, settings)

    async def aquery_rows(self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return await self.call(self.query_rows, sql, params, settings)


def get_store(dsn: str) -> Store:
    """The process-wide Store for a DSN (one embedded engine per process)."""
    with _stores_lock:
        store = _stores.get(dsn)
        if store is None:
            store = Store(dsn)
            _stores[dsn] = store
        return store
