"""User SQL under load from two tenants: one project's slow queries do not hold up another's.

An api with keys for two projects on the session stack's storage, served for real
(concurrent HTTP requests). Project a sends three 3-second queries; while they run,
project b's `SELECT count()` answers within a second of its time before them, and b's training run keeps
landing points (the processor's writes never wait behind user SQL).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from runstream import Experiment
from runstream.api.app import create_app, listen_socket, server_config
from runstream.keys import KeyStore
from tests.conftest import Stack, free_port, wait_until

SLOW = "SELECT sleep(3) AS s"


@pytest.fixture()
def secured_api(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Any]]:
    keys = KeyStore(tmp_path / "keys.json")
    tokens = {project: keys.create(project, "sql")[0] for project in ("tenant-a", "tenant-b")}
    app = create_app(stack.settings.with_(home=tmp_path, sql_concurrency=4, sql_project_share=2), stack.store)
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listen_socket("127.0.0.1", port)]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, what="secured api start")
    try:
        yield f"http://127.0.0.1:{port}", tokens, app
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _query(api: str, token: str, sql: str) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = httpx.post(f"{api}/api/v1/query", json={"sql": sql}, headers={"X-API-Key": token}, timeout=30)
    return time.perf_counter() - started, response


def test_one_projects_slow_queries_do_not_delay_anothers_count_while_writes_land(stack: Stack, secured_api: tuple[str, dict[str, str], Any]) -> None:
    api, tokens, app = secured_api
    run = Experiment("sql-isolation", settings=stack.settings.with_(project="tenant-b")).start_logging(name="writer")
    stop = threading.Event()

    def train() -> None:
        step = 0
        while not stop.is_set():
            run.log("loss", 1.0 / (step + 1), step=step)
            step += 1
            if step % 50 == 0:
                run.flush()
                time.sleep(0.01)  # a training step's pace, not a wait for a condition

    def points() -> int:
        return int(stack.store.query_rows("SELECT count() FROM metric_points WHERE run_id = {r:String}", {"r": run.id})[0][0])

    writer = threading.Thread(target=train, daemon=True)
    writer.start()
    slow: list[tuple[float, httpx.Response]] = []
    senders = [threading.Thread(target=lambda: slow.append(_query(api, tokens["tenant-a"], SLOW))) for _ in range(3)]
    try:
        wait_until(lambda: points() > 0, 30, what="the writer's first points stored")
        # Tenant b's count() before the load: its time unloaded (and its scope's views made).
        baseline, answer = _query(api, tokens["tenant-b"], "SELECT count() AS n FROM metric_points")
        assert answer.status_code == 200, answer.text
        for t in senders:
            t.start()
        wait_until(
            lambda: getattr(app.state, "sql_engine", None) is not None and app.state.sql_engine.gate.running["tenant-a"] == 2,
            10,
            what="two of tenant a's queries running",
        )
        gate = app.state.sql_engine.gate
        wait_until(lambda: gate.waiting("tenant-a") == 1, 10, what="tenant a's third query waiting for its share")
        before = points()
        elapsed, answer = _query(api, tokens["tenant-b"], "SELECT count() AS n FROM metric_points")
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"][0][0] > 0
        assert elapsed - baseline < 1.0, f"tenant b's count() took {elapsed:.2f} s behind tenant a's slow queries ({baseline:.2f} s before them)"
        # Writes land while tenant a's queries still run (its third has not even started).
        wait_until(lambda: points() > before, 10, what="points stored while the slow queries run")
        assert gate.running["tenant-a"] >= 1
    finally:
        stop.set()
        writer.join(timeout=30)
        for t in senders:
            t.join(timeout=30)
        run.complete()
    assert [r.status_code for _, r in slow] == [200, 200, 200], [r.text for _, r in slow]
    times = sorted(t for t, _ in slow)
    answered = ", ".join(f"{t:.2f}" for t in times)
    print(f"sql isolation: tenant b's count() {elapsed:.3f} s ({baseline:.3f} s unloaded); tenant a's sleep(3) x3 answered after {answered} s")
    # Two ran at once (both done after ~3 s), the third after a slot freed (~6 s), not 3, 6, 9.
    assert times[1] < 5.5 and times[2] >= 5.5, times
