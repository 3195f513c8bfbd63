"""Applying the schema's migrations, one process at a time (docs/storage.md).

Every process that opens a Store runs `migrate`. When the database is current it
reads one table and returns. Otherwise the process takes the migration lock, applies
what is still missing, and releases it; the others wait, then find nothing to do.
So any number of processors and apis may start together against one fresh or old
database: the copy-and-swap migrations (3, 6) never run twice at once, and no process
reads or writes a table before its migration has finished.

The lock is a table: `CREATE TABLE` without `IF NOT EXISTS` succeeds in exactly one
caller (ClickHouse serialises DDL on a name), the only compare-and-set every
ClickHouse offers, embedded or server, without Keeper. Each holding is an epoch,
table `schema_lock_<n>`: the holder writes a heartbeat row every few seconds from a
thread of its own (one statement of a migration can run for minutes), and writes a
release row when done. The next holder creates epoch n + 1 once epoch n is released
or its heartbeat is older than the lease (its process died). Creating the next epoch
is the takeover, so two waiters that both saw a stale lock cannot both win; a holder
checks before each statement that no later epoch exists, so one that was only frozen
stops instead of migrating beside its successor. Old epochs are dropped on release.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from runstream.storage.schema import MIGRATIONS

log = logging.getLogger("runstream.storage")

LOCK_PREFIX = "schema_lock_"
_LOCK_TABLE = re.compile(rf"^{LOCK_PREFIX}(\d+)$")


class Commander(Protocol):
    def command(self, cmd: str) -> object: ...

    def query(self, query: str) -> object: ...


class MigrationError(RuntimeError):
    """The schema could not be brought up to date (the lock not taken in time, or fenced off)."""


def _rows(client: Commander, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in client.query(sql).result_rows]  # type: ignore[attr-defined]


def pending(client: Commander, migrations: Sequence[tuple[int, list[str]]] = MIGRATIONS) -> list[int]:
    """Versions not yet recorded as applied."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_at DateTime DEFAULT now())"
        " ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {int(str(row[0])) for row in _rows(client, "SELECT version FROM schema_migrations")}
    return [version for version, _ in migrations if version not in done]


class MigrationLock:
    """One epoch of the migration lock, taken by `acquire` and given back by `release`.

    `connect` opens the extra connection the heartbeat thread writes on."""

    def __init__(
        self,
        client: Commander,
        connect: Callable[[], Commander],
        lease_s: float = 30.0,
        heartbeat_s: float = 3.0,
        poll_s: float = 0.25,
    ) -> None:
        self.client = client
        self.connect = connect
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.poll_s = poll_s
        self.holder = f"{uuid.uuid4().hex[:12]}"
        self.epoch: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def epochs(self) -> list[int]:
        names = _rows(self.client, f"SELECT name FROM system.tables WHERE database = currentDatabase() AND name LIKE '{LOCK_PREFIX}%'")
        return sorted(int(m.group(1)) for (name,) in names if (m := _LOCK_TABLE.match(str(name))))

    def _free(self, epoch: int) -> bool:
        """Whether `epoch` no longer holds: released, or its last sign of life (its heartbeat,
        or the table's creation while the holder has not written its first row) older than the lease."""
        created = (
            "(SELECT toDateTime64(metadata_modification_time, 3) FROM system.tables"
            f" WHERE database = currentDatabase() AND name = '{LOCK_PREFIX}{epoch}')"
        )
        rows = _rows(
            self.client,
            f"SELECT countIf(kind = 'release'), dateDiff('millisecond', greatest(max(at), {created}), now64(3)) FROM {LOCK_PREFIX}{epoch}",
        )
        released, idle_ms = rows[0] if rows else (0, 0)
        return int(str(released)) > 0 or float(str(idle_ms)) > self.lease_s * 1000

    def _take(self, epoch: int) -> bool:
        try:
            self.client.command(
                f"CREATE TABLE {LOCK_PREFIX}{epoch} (holder String, kind LowCardinality(String), at DateTime64(3) DEFAULT now64(3))"
                " ENGINE = MergeTree ORDER BY at"
            )
        except Exception as exc:
            if "already exists" not in str(exc).lower():
                log.warning("taking the migration lock failed (will retry): %s", exc)
            return False
        self._write(self.client, epoch, "take")
        return True

    def _write(self, client: Commander, epoch: int, kind: str) -> None:
        client.command(f"INSERT INTO {LOCK_PREFIX}{epoch} (holder, kind) VALUES ('{self.holder}', '{kind}')")

    def acquire(self, timeout_s: float, done: Callable[[], bool]) -> bool:
        """Take the lock; False (without it) when `done()` says there is nothing left to do."""
        deadline = time.monotonic() + timeout_s
        while True:
            epochs = self.epochs()
            current = epochs[-1] if epochs else 0
            if current == 0 or self._free(current):
                if done():
                    return False
                if self._take(current + 1):
                    self.epoch = current + 1
                    if current:
                        log.info("migration lock: took epoch %d after epoch %d", self.epoch, current)
                    self._beat = threading.Thread(target=self._heartbeat, name="schema-lock-heartbeat", daemon=True)
                    self._beat.start()
                    return True
                continue
            if done():
                return False
            if time.monotonic() > deadline:
                raise MigrationError(
                    f"another process has held the schema migration lock ({LOCK_PREFIX}{current}) for over {timeout_s:g} s;"
                    f" if no process is migrating, DROP TABLE {LOCK_PREFIX}{current}"
                )
            time.sleep(self.poll_s)

    def _heartbeat(self) -> None:
        assert self.epoch is not None
        client = self.connect()
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write(client, self.epoch, "beat")
            except Exception as exc:  # the next beat may land; the lease allows for a few missed ones
                log.warning("migration lock heartbeat failed: %s", exc)

    def check(self) -> None:
        """Raise when a later epoch exists: this holder was taken over (it stalled past the lease)."""
        assert self.epoch is not None
        later = [e for e in self.epochs() if e > self.epoch]
        if later:
            raise MigrationError(f"the schema migration lock was taken over (epoch {later[-1]} after ours, {self.epoch})")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.epoch is None:
            return
        self._write(self.client, self.epoch, "release")
        for old in self.epochs():
            if old < self.epoch:
                self.client.command(f"DROP TABLE IF EXISTS {LOCK_PREFIX}{old}")


def migrate(
    client: Commander,
    connect: Callable[[], Commander] | None = None,
    migrations: Sequence[tuple[int, list[str]]] = MIGRATIONS,
    lock_timeout_s: float = 600.0,
    lease_s: float = 30.0,
) -> list[int]:
    """Apply every migration not yet recorded, under the lock; return the versions applied by this call."""
    if not pending(client, migrations):
        return []
    lock = MigrationLock(client, connect or (lambda: client), lease_s=lease_s)
    if not lock.acquire(lock_timeout_s, done=lambda: not pending(client, migrations)):
        return []
    try:
        todo = set(pending(client, migrations))  # a holder before us may have applied some
        applied = []
        for version, statements in migrations:
            if version not in todo:
                continue
            log.info("applying schema migration %d", version)
            for statement in statements:
                lock.check()
                client.command(statement)
            client.command(f"INSERT INTO schema_migrations (version) VALUES ({int(version)})")
            applied.append(version)
        return applied
    finally:
        lock.release()
