"""The ClickHouse connection: one clickhouse-connect client per thread, both DSN kinds.

`chdb://PATH` runs the embedded engine in this process; `http(s)://` talks to a
server. The embedded engine refuses clickhouse-connect's async client, so calls
run on worker threads, each with its own connection (chdb allows many handles
to the one engine a process can host, and runs their queries in parallel).
Writes have a thread of their own: a dashboard's reads never queue in front of
the processor's inserts. One process-wide Store per DSN, shared by processor and api.

A failed ClickHouse call raises StorageError, whose `transient` says whether the same
call can succeed later (`is_transient`): the processor retries only those.
"""

from __future__ import annotations

import asyncio
import errno
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlparse

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from runstream.errors import StorageError
from runstream.storage.migrations import migrate

T = TypeVar("T")

_stores: dict[str, Store] = {}
_stores_lock = threading.Lock()

# ClickHouse error codes after which the same call can succeed: the server, a replica or
# the coordination service is away, a limit of the moment was reached (memory, parts
# awaiting merges, concurrent queries, a quota's interval), or the call was cut off.
TRANSIENT_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        160,  # TOO_SLOW
        201,  # QUOTA_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        225,  # NO_ZOOKEEPER
        236,  # ABORTED
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        243,  # NOT_ENOUGH_SPACE
        252,  # TOO_MANY_PARTS
        279,  # ALL_CONNECTION_TRIES_FAILED
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        394,  # QUERY_WAS_CANCELLED
        425,  # SYSTEM_ERROR (an errno from the server's OS)
        439,  # CANNOT_SCHEDULE_TASK
        473,  # DEADLOCK_AVOIDED
        733,  # TABLE_IS_BEING_RESTARTED
        999,  # KEEPER_EXCEPTION
        1000,  # POCO_EXCEPTION (the server's network layer)
    }
)
# Answers of a proxy or a server that is starting or overloaded, when no code came with them.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 502, 503, 504})
# OS errors of the moment: resources (memory, disk, descriptors) and the network.
TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ENOMEM, errno.ENOSPC, errno.EMFILE, errno.ENFILE}
    | {errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH}
)
# chdb raises RuntimeErrors whose text carries the engine's code; clickhouse-connect's errors carry it as `code`.
_CODE = re.compile(r"\bCode:\s*(\d+)\. DB::Exception")
_HTTP_STATUS = re.compile(r"HTTP status (\d+)")


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code of a failure, when it came from the engine or the server."""
    code = getattr(exc, "code", None) if isinstance(exc, ClickHouseError) else None
    if isinstance(code, int):
        return code
    if isinstance(exc, ClickHouseError | RuntimeError):
        match = _CODE.search(str(exc))
        if match:
            return int(match.group(1))
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether the same call can succeed later. A ClickHouse code decides when there is one;
    a transport failure (no answer from the server, a connection refused or reset, a
    timeout) is transient; any other error, ClickHouse's (a syntax error, an unknown table
    or column, a type mismatch) or Python's (TypeError, KeyError... from a bug or bad
    data), fails the same way on every try."""
    if isinstance(exc, StorageError):
        return exc.transient
    code = error_code(exc)
    if code is not None:
        return code in TRANSIENT_CODES
    if isinstance(exc, OperationalError):  # clickhouse-connect: the request got no answer
        return True
    if isinstance(exc, ClickHouseError):
        status = _HTTP_STATUS.search(str(exc))
        return status is not None and int(status.group(1)) in TRANSIENT_HTTP_STATUSES
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNOS
    return False


def storage_error(exc: BaseException) -> StorageError:
    """`exc` as a StorageError (itself when it is one), classified by is_transient."""
    if isinstance(exc, StorageError):
        return exc
    return StorageError(f"{type(exc).__name__}: {exc}", transient=is_transient(exc))


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
        # Its own connection for the migration lock's heartbeat thread.
        self.applied_migrations = migrate(self.client(), connect=lambda: _make_client(dsn))

    @contextmanager
    def _clickhouse_call(self) -> Iterator[None]:
        """A call on this thread's client; a failure raises StorageError and drops the client.
        A query cut off mid-stream (a time limit, a memory limit) leaves the rest of its
        answer in the embedded engine's connection, and the next query on it reads that as
        its own (IndexError in the block reader): a fresh connection starts clean."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            self._local.client = None
            raise storage_error(exc) from exc

    def client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = _make_client(self.dsn)
            self._local.client = client
        return client

    # --- sync API (call from the worker thread, or from scripts and tests); failures raise StorageError ---
    def query_rows(self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._clickhouse_call():
            rows: Any = self.client().query(sql, parameters=params, settings=settings).result_rows
            return [tuple(r) for r in rows]

    def query_dicts(self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._clickhouse_call():
            result = self.client().query(sql, parameters=params, settings=settings)
            names = result.column_names
            return [dict(zip(names, row)) for row in result.result_rows]

    def command(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        with self._clickhouse_call():
            return self.client().command(sql, parameters=params)

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        if data.num_rows:
            with self._clickhouse_call():
                self.client().insert_arrow(table, data)

    def insert_rows(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        if rows:
            with self._clickhouse_call():
                self.client().insert(table, [tuple(r) for r in rows], column_names=list(columns))

    # --- async API ---
    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn on a reader thread. Its own errors (an api query's NotFound, BadRequest) pass
        as they are; the store's calls inside it raise StorageError."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def call_write(self, fn: Callable[..., T], *args: Any, lane: int = 0, **kwargs: Any) -> T:
        """Run fn on a writer lane (one thread each, calls in order): the processor's inserts and its own reads.
        Any failure raises StorageError: fn also holds the code that shapes an insert, and a
        bug there fails again on every try (not transient)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writers[lane], lambda: fn(*args, **kwargs))
        except StorageError:
            raise
        except Exception as exc:
            raise storage_error(exc) from exc

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
