"""Processes that start together against one ClickHouse server migrate it once.

Each child opens a Store (which migrates) at the same moment, released by a go file
after every child has imported; before the lock, the copy-and-swap migrations raced
and most children died with UNKNOWN_TABLE. Server only: two processes cannot share
an embedded engine's path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from runstream.storage import migrations, schema
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
CHILDREN = 4

CHILD = r"""
import json, os, sys, time
from runstream.storage.store import Store
go = sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.005)
store = Store(sys.argv[1])
print(json.dumps({"applied": store.applied_migrations}), flush=True)
"""


@pytest.fixture()
def database(clickhouse_server: str) -> Iterator[tuple[str, Client]]:
    """A fresh database on the session's server: its DSN and a client on it."""
    base = clickhouse_server.rsplit("/", 1)[0]
    name = f"mig_{uuid.uuid4().hex[:10]}"
    admin = clickhouse_connect.get_client(dsn=f"{base}/default", autogenerate_session_id=False)
    admin.command(f"CREATE DATABASE {name}")
    client = clickhouse_connect.get_client(dsn=f"{base}/{name}", autogenerate_session_id=False)
    try:
        yield f"{base}/{name}", client
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")


def _start_together(dsn: str, tmp_path: Path, n: int = CHILDREN) -> list[list[int]]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, dsn, str(go)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    applied = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-3000:]
        applied.append(json.loads(out.strip().splitlines()[-1])["applied"])
    return applied


def _versions(client: Client) -> dict[int, int]:
    return {int(v): int(c) for v, c in client.query("SELECT version, count() FROM schema_migrations GROUP BY version").result_rows}


def _tables(client: Client) -> set[str]:
    return {str(r[0]) for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows}


ALL = [version for version, _ in schema.MIGRATIONS]


def test_processes_starting_together_on_a_fresh_database_migrate_it_once(database: tuple[str, Client], tmp_path: Path) -> None:
    dsn, client = database
    applied = _start_together(dsn, tmp_path)
    # One process applied everything; the others waited on the lock and found nothing to do.
    assert sorted(v for a in applied for v in a) == ALL
    assert sum(1 for a in applied if a) == 1
    assert _versions(client) == {v: 1 for v in ALL}
    tables = _tables(client)
    assert {"metric_points", "metric_summaries", "runs", "ingested_events"} <= tables
    assert not {t for t in tables if t.endswith(("_v3", "_v6"))}
    locks = [t for t in tables if t.startswith(migrations.LOCK_PREFIX)]
    assert len(locks) == 1
    kinds = [str(r[0]) for r in client.query(f"SELECT kind FROM {locks[0]} ORDER BY at").result_rows]
    assert kinds[0] == "take" and kinds[-1] == "release"


def test_processes_starting_together_on_an_old_database_keep_every_point(database: tuple[str, Client], tmp_path: Path) -> None:
    dsn, client = database
    migrations.migrate(client, migrations=[m for m in schema.MIGRATIONS if m[0] < 3])
    client.command(
        "INSERT INTO metric_points (project, run_id, metric, step, value, kafka_topic, kafka_partition, kafka_offset)"
        " SELECT 'p', concat('r', toString(number % 7)), concat('m', toString(number % 3)), number, number * 0.5, 't', 0, number"
        " FROM numbers(20000)"
    )
    applied = _start_together(dsn, tmp_path)
    assert sorted(v for a in applied for v in a) == [v for v in ALL if v >= 3]
    assert _versions(client) == {v: 1 for v in ALL}
    assert client.query("SELECT count(), sum(value) FROM metric_points").result_rows[0] == (20000, sum(i * 0.5 for i in range(20000)))
    key = client.query("SELECT sorting_key FROM system.tables WHERE database = currentDatabase() AND name = 'metric_points'").result_rows[0][0]
    assert key == "project, metric, run_id, step"


def test_a_lock_left_by_a_dead_process_is_taken_over_after_its_lease(database: tuple[str, Client]) -> None:
    dsn, client = database
    # Epoch 1 as a process killed mid-migration leaves it: taken, heartbeats stopped 40 s ago.
    client.command(
        f"CREATE TABLE {migrations.LOCK_PREFIX}1 (holder String, kind LowCardinality(String), at DateTime64(3) DEFAULT now64(3))"
        " ENGINE = MergeTree ORDER BY at"
    )
    client.command(f"INSERT INTO {migrations.LOCK_PREFIX}1 (holder, kind, at) VALUES ('dead', 'take', now64(3) - INTERVAL 40 SECOND)")
    # The lease runs from the last sign of life: here the table's creation, a moment ago.
    assert migrations.migrate(client, lease_s=1) == ALL
    assert [t for t in _tables(client) if t.startswith(migrations.LOCK_PREFIX)] == [f"{migrations.LOCK_PREFIX}2"]


def test_a_live_lock_makes_others_wait_then_find_nothing_to_do(database: tuple[str, Client]) -> None:
    dsn, client = database
    holder = migrations.MigrationLock(client, lambda: clickhouse_connect.get_client(dsn=dsn, autogenerate_session_id=False))
    assert holder.acquire(10, done=lambda: False)
    result: list[list[int]] = []
    waiter_client = clickhouse_connect.get_client(dsn=dsn, autogenerate_session_id=False)
    waiter = threading.Thread(target=lambda: result.append(migrations.migrate(waiter_client)))
    waiter.start()
    try:
        # The waiter polls the held lock; it must not get past it while we hold it.
        waiter.join(timeout=2)
        assert waiter.is_alive() and not result
        for version, statements in schema.MIGRATIONS:
            for statement in statements:
                client.command(statement)
            client.command(f"INSERT INTO schema_migrations (version) VALUES ({version})")
    finally:
        holder.release()
    waiter.join(timeout=30)
    assert result == [[]]
    assert _versions(client) == {v: 1 for v in ALL}
    wait_until(lambda: not waiter.is_alive(), 5, what="waiter done")
