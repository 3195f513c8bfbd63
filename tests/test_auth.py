"""API keys: a key sees and writes only its project's data, over HTTP and the WebSocket.

A separate app (its own RUNSTREAM_HOME with a keys file) reads the session
stack's ClickHouse and live topic; the session stack itself stays open.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from runstream import Experiment
from runstream.api.app import create_app, server_config
from runstream.keys import KeyStore
from tests.conftest import Stack, free_port, wait_until

SECRET_B = b"beta's file"


@pytest.fixture(scope="module")
def two_projects(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One run in project alpha and one in project beta, ingested through the open session stack."""
    ids = {}
    payload = tmp_path_factory.mktemp("payload") / "a.txt"
    for project in ("alpha", "beta"):
        payload.write_bytes(SECRET_B if project == "beta" else b"alpha's file")
        settings = stack.settings.with_(project=project)
        run = Experiment(f"exp-{project}", settings=settings).start_logging(name=f"run-{project}", tags={"team": project})
        for i in range(10):
            run.log("loss", 1.0 / (i + 1))
        run.log_table("tbl", {"x": [1, 2], "y": [3.0, 4.0]})
        run.log_text("stdout", f"hello from {project}")
        run.upload_file("outputs/a.txt", str(payload))
        run.complete()
        run.get_metrics()
        ids[project] = run.id
    sql = "SELECT status FROM runs FINAL WHERE run_id IN {ids:Array(String)}"
    wait_until(lambda: stack.store.query_rows(sql, {"ids": list(ids.values())}) == [("Completed",)] * 2, what="both runs completed")
    return ids


@pytest.fixture(scope="module")
def secured(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str], KeyStore]]:
    home = tmp_path_factory.mktemp("secured-home")
    # The CLI writes the key store that the server reads.
    out = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "keys", "--home", str(home), "create", "--project", "alpha", "--name", "ci"],
        capture_output=True,
        text=True,
        check=True,
    )
    token_a = out.stdout.split(": ")[1].split()[0]
    assert (home / "keys.json").stat().st_mode & 0o777 == 0o600
    assert token_a not in (home / "keys.json").read_text()
    store = KeyStore(home / "keys.json")
    token_b, _ = store.create("beta", "other")
    app = create_app(stack.settings.with_(home=home), stack.store)
    app.state.artifacts = stack.server.config.app.state.artifacts  # type: ignore[union-attr]  # same files as the stack
    with TestClient(app) as client:  # runs the lifespan: the live hub reads the stack's live topic
        wait_until(lambda: app.state.hub.ready.is_set(), 30, what="live hub ready")
        yield client, {"alpha": token_a, "beta": token_b}, store


def _h(token: str) -> dict[str, str]:
    return {"X-API-Key": token}


def test_no_key_means_401_once_keys_exist(secured, two_projects) -> None:
    client, tokens, _ = secured
    response = client.get("/api/v1/runs")
    assert response.status_code == 401 and "API key" in response.json()["detail"]
    assert client.get("/api/v1/runs", headers=_h("rs_wrong")).status_code == 401
    assert client.get("/api/v1/runs", headers={"Authorization": "Bearer "}).status_code == 401
    assert client.post("/api/v1/events", json={"events": []}).status_code == 401
    for open_path in ("/healthz", "/metrics", "/docs", "/openapi.json", "/"):
        assert client.get(open_path).status_code == 200, open_path
    assert client.get("/api/v1/runs", headers={"Authorization": f"Bearer {tokens['alpha']}"}).status_code == 200
    assert client.get(f"/api/v1/runs?api_key={tokens['alpha']}").status_code == 200


def test_a_key_reads_only_its_project(secured, two_projects) -> None:
    client, tokens, _ = secured
    a, b = two_projects["alpha"], two_projects["beta"]
    h = _h(tokens["alpha"])
    listed = client.get("/api/v1/runs?limit=10000", headers=h).json()["runs"]
    assert a in {r["id"] for r in listed} and b not in {r["id"] for r in listed}
    assert {r["project"] for r in listed} == {"alpha"}
    for filters in ("experiment=exp-beta", "tag=team=beta", "tag=team", "status=Completed", f"parent={b}", "order_by=metric.loss"):
        ids = {r["id"] for r in client.get(f"/api/v1/runs?{filters}&limit=10000", headers=h).json()["runs"]}
        assert b not in ids, filters
    assert {e["project"] for e in client.get("/api/v1/experiments", headers=h).json()} == {"alpha"}
    assert client.get(f"/api/v1/runs/{a}", headers=h).status_code == 200
    for path in (
        f"/api/v1/runs/{b}",
        f"/api/v1/runs/{b}/metrics",
        f"/api/v1/runs/{b}/metrics/loss",
        f"/api/v1/runs/{b}/tables/tbl",
        f"/api/v1/runs/{b}/logs",
        f"/api/v1/runs/{b}/files",
        f"/api/v1/runs/{b}/files/outputs/a.txt",
    ):
        response = client.get(path, headers=h)
        assert response.status_code == 404, path
        assert client.get(path.replace(b, "no-such-run"), headers=h).status_code == 404  # same answer: existence does not leak
    assert client.get(f"/api/v1/runs/{a}/files/outputs/a.txt?api_key={tokens['alpha']}").content == b"alpha's file"
    compare = client.get(f"/api/v1/compare?runs={a},{b}&metrics=loss", headers=h).json()
    assert set(compare["metrics"].get("loss", {})) == {a}
    board = client.get("/api/v1/leaderboard?metric=loss&mode=min&limit=1000", headers=h).json()
    assert b not in {r["id"] for r in board["runs"]}
    assert not client.get("/api/v1/leaderboard?metric=loss&experiment=exp-beta", headers=h).json()["runs"]
    agg = client.get(f"/api/v1/aggregate?metric=loss&runs={a},{b}", headers=h)
    assert [g["runs"] for g in agg.json()["groups"]] == [1]  # alpha's run only
    assert client.get("/api/v1/aggregate?metric=loss&experiment=exp-beta", headers=h).json()["groups"] == []
    for sql in ("SELECT DISTINCT project FROM runs", "SELECT DISTINCT project FROM metric_points", "SELECT DISTINCT project FROM logs"):
        assert client.post("/api/v1/query", headers=h, json={"sql": sql}).json()["rows"] == [["alpha"]], sql
    refused = client.post("/api/v1/query", headers=h, json={"sql": "SELECT * FROM runstream.runs"})
    assert refused.status_code == 403
    # The other key sees the mirror image.
    hb = _h(tokens["beta"])
    assert client.get(f"/api/v1/runs/{b}", headers=hb).status_code == 200
    assert client.get(f"/api/v1/runs/{a}/metrics", headers=hb).status_code == 404


def test_a_key_writes_only_its_project(secured, two_projects, stack: Stack) -> None:
    client, tokens, _ = secured
    a, b = two_projects["alpha"], two_projects["beta"]
    h = _h(tokens["alpha"])
    event = {"v": 1, "id": "k:1", "kind": "run_end", "run": b, "project": "beta", "ts": time.time(), "status": "Failed"}
    response = client.post("/api/v1/events", headers=h, json={"events": [event]})
    assert response.status_code == 403 and "alpha" in response.json()["detail"]
    # Reusing the other project's run id under one's own project would change that run: refused.
    for project in ("alpha", None):
        ev = dict(event)
        if project is None:
            del ev["project"]  # filled in from the key
        else:
            ev["project"] = project
        response = client.post("/api/v1/events", headers=h, json={"events": [ev]})
        assert response.status_code == 409 and "another project" in response.json()["detail"], response.text
    # Upload: naming the other project is refused; without it the bytes land in the key's own project, not beta's.
    assert client.put(f"/api/v1/runs/{b}/files/outputs/a.txt?project=beta", headers=h, content=b"evil").status_code == 403
    client.put(f"/api/v1/runs/{b}/files/outputs/a.txt", headers=h, content=b"evil")
    assert client.get(f"/api/v1/runs/{b}/files/outputs/a.txt", headers=_h(tokens["beta"])).content == SECRET_B
    # A write within one's own project goes through.
    own = {"v": 1, "id": f"k:{time.time_ns()}", "kind": "tags", "run": a, "ts": time.time(), "tags": {"checked": "yes"}}
    assert client.post("/api/v1/events", headers=h, json={"events": [own]}).status_code == 202
    wait_until(lambda: stack.store.query_rows("SELECT tags['checked'] FROM runs FINAL WHERE run_id = {r:String}", {"r": a}) == [("yes",)], what="tag")
    status = stack.store.query_rows("SELECT project, status FROM runs FINAL WHERE run_id = {r:String}", {"r": b})
    assert status == [("beta", "Completed")]


def test_the_websocket_needs_a_key_and_sees_only_its_project(secured, two_projects, stack: Stack) -> None:
    client, tokens, _ = secured
    a, b = two_projects["alpha"], two_projects["beta"]
    with pytest.raises(WebSocketDisconnect) as refused:
        with client.websocket_connect("/ws?api_key=rs_wrong") as ws:
            ws.receive_text()
    assert refused.value.code == 4401
    with client.websocket_connect(f"/ws?api_key={tokens['alpha']}") as wa, client.websocket_connect(f"/ws?api_key={tokens['beta']}") as wb:
        for target, expected in (({"run": b}, []), ({"experiment": "exp-beta"}, []), ({"run": a}, [a])):
            wa.send_json({"subscribe": target})
            assert wa.receive_json()["type"] == "subscribed"
            snapshot = wa.receive_json()
            assert snapshot["type"] == "snapshot" and [r["id"] for r in snapshot["runs"]] == expected
        wb.send_json({"subscribe": {"run": b}})
        assert [m["type"] for m in (wb.receive_json(), wb.receive_json())] == ["subscribed", "snapshot"]
        # An update of beta's run reaches beta's socket...
        post = {"v": 1, "kind": "metrics", "ts": time.time(), "names": ["live"], "m": [0], "s": [1], "x": [0.5]}
        events = [{**post, "id": f"ws:{time.time_ns()}", "run": b, "project": "beta"}]
        assert httpx.post(f"{stack.api_url}/api/v1/events", json={"events": events}).status_code == 202
        assert _next_update(wb)["run"] == b
        # ... and, dispatched at the same moment, never to alpha's, which next sees its own run's update only.
        events = [{**post, "id": f"ws:{time.time_ns()}", "run": a, "project": "alpha"}]
        assert httpx.post(f"{stack.api_url}/api/v1/events", json={"events": events}).status_code == 202
        assert _next_update(wa)["run"] == a


def _next_update(ws: Any) -> dict[str, Any]:
    message = ws.receive_json()
    updates = message["updates"] if message.get("type") == "updates" else [message]
    assert len({u["run"] for u in updates}) == 1, updates
    return dict(updates[0])


def test_a_real_server_closes_a_keyless_websocket_with_4401(stack: Stack, tmp_path: Path) -> None:
    """What a browser sees: an accepted socket closed with 4401, not a handshake refused with HTTP 403."""
    KeyStore(tmp_path / "keys.json").create("alpha")
    app = create_app(stack.settings.with_(home=tmp_path), stack.store)
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, lifespan="off"))
    stack.loop.call_soon_threadsafe(lambda: stack.loop.create_task(server.serve()))
    wait_until(lambda: server.started, 15, what="server start")
    try:

        async def connect() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except websockets.ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None
            return None

        assert asyncio.run(connect()) == 4401
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/experiments").status_code == 401
    finally:
        server.should_exit = True


def test_revoked_key_is_refused_at_once(secured, two_projects) -> None:
    client, _, store = secured
    token, key = store.create("beta", "short-lived")
    assert client.get("/api/v1/runs", headers=_h(token)).status_code == 200
    out = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "keys", "--home", str(store.path.parent), "list"], capture_output=True, text=True, check=True
    )
    assert key["id"] in out.stdout and token not in out.stdout and key["prefix"] in out.stdout
    subprocess.run(
        [sys.executable, "-m", "runstream.cli", "keys", "--home", str(store.path.parent), "revoke", key["id"]], check=True, capture_output=True
    )
    assert client.get("/api/v1/runs", headers=_h(token)).status_code == 401


def test_an_unreadable_key_file_fails_closed(stack: Stack, tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    token, _ = store.create("alpha")
    client = TestClient(create_app(stack.settings.with_(home=tmp_path), stack.store))
    assert client.get("/api/v1/experiments", headers=_h(token)).status_code == 200
    (tmp_path / "keys.json").write_text("{not json")
    assert client.get("/api/v1/experiments", headers=_h(token)).status_code == 401
    assert client.get("/api/v1/experiments").status_code == 401
    os.unlink(tmp_path / "keys.json")  # no file at all: no keys, open again (the local default)
    assert client.get("/api/v1/experiments").status_code == 200


def test_upload_too_large_is_refused_before_reading(secured, two_projects) -> None:
    client, tokens, _ = secured
    client.app.state.max_upload_bytes = 10  # type: ignore[attr-defined]
    try:
        response = client.put(f"/api/v1/runs/{two_projects['alpha']}/files/big.bin", headers=_h(tokens["alpha"]), content=b"x" * 11)
        assert response.status_code == 413 and "limit" in response.json()["detail"]
    finally:
        client.app.state.max_upload_bytes = 512 * 1024 * 1024  # type: ignore[attr-defined]


def test_without_keys_everything_is_open(stack: Stack, two_projects) -> None:
    assert httpx.get(f"{stack.api_url}/api/v1/runs/{two_projects['beta']}").status_code == 200
