"""The SQL guard (api/sql_guard.py) on a ClickHouse server over HTTP, not the embedded engine.

`runstream clickhouse start` gives the server; SqlEngine must answer a plain SELECT and a
scoped query there and refuse what it refuses on the embedded engine, with and without
its text pre-filter (the server's EXPLAIN AST carries no SETTINGS / FORMAT of the client's).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from runstream.api.sql_guard import QueryRefused, SqlEngine
from runstream.daemon import port_open
from runstream.storage.store import Store, get_store
from tests.conftest import free_port, wait_until
from tests.test_analytics import FORBIDDEN
from tests.test_clickhouse_server import cli

LOG_COLUMNS = ["project", "run_id", "stream", "ts", "idx", "line", "kafka_topic", "kafka_partition", "kafka_offset"]


@pytest.fixture(scope="module")
def server_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    home = tmp_path_factory.mktemp("clickhouse-server-home")
    port = free_port()
    try:
        started = cli(home, "start", "--port", str(port))
        assert started.returncode == 0, started.stderr
        yield get_store(f"http://127.0.0.1:{port}/default")
    finally:
        cli(home, "stop")
        wait_until(lambda: not port_open("127.0.0.1", port), timeout=30, what=f"port {port} released")


def test_guard_answers_and_refuses_on_the_server(server_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not server_store.embedded
    mine, other = f"p-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = [(project, "r1", "stdout", now, i, f"{project} {i}", "t", 0, i) for project in (mine, other) for i in range(2)]
    server_store.insert_rows("run_logs", rows, LOG_COLUMNS)
    engine = SqlEngine(server_store)

    assert engine.run("SELECT 1 AS one", None).rows == [[1]]
    scoped = engine.run("SELECT DISTINCT project, count() FROM logs GROUP BY project", mine)
    assert scoped.rows == [[mine, 2]]
    unscoped = engine.run(f"SELECT count(DISTINCT project) FROM logs WHERE project IN ('{mine}', '{other}')", None)
    assert unscoped.rows == [[2]]

    with pytest.raises(QueryRefused) as info:
        engine.run("SELECT * FROM system.tables", mine)
    assert info.value.status == 403 and "system.tables" in str(info.value)
    for sql in FORBIDDEN:
        with pytest.raises(QueryRefused):
            engine.run(sql, mine)

    # Defence in depth: without the lexer, the server's parser and analyser refuse the same.
    import runstream.api.sql_guard as guard

    monkeypatch.setattr(guard, "scan", lambda sql: sql.strip())
    for sql in FORBIDDEN:
        if sql.strip():
            with pytest.raises(QueryRefused):
                engine.run(sql, mine)
    assert engine.run("SELECT 1 AS one", None).rows == [[1]]
    assert server_store.query_rows("SELECT count() FROM run_logs WHERE project IN ({a:String}, {b:String})", {"a": mine, "b": other}) == [(4,)]
