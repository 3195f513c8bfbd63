"""API keys: a key sees and writes only its project's data, over HTTP and the WebSocket."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from api.app import create_app
from ingest import Experiment
from runstream.keys import KeyStore
from tests.conftest import Stack


@pytest.fixture(scope="module")
def two_projects(stack: Stack) -> dict[str, str]:
    """One run in project alpha and one in project beta, ingested through the open session stack."""
    ids = {}
    for project in ("alpha", "beta"):
        settings = stack.settings.with_(project=project)
        run = Experiment(f"exp-{project}", settings=settings).start_logging(name=f"run-{project}", tags={"team": project})
        for i in range(10):
            run.log("loss", 1.0 / (i + 1))
        run.log_table("tbl", {"x": [1, 2], "y": [3.0, 4.0]})
        run.log_text("stdout", f"hello from {project}")
        run.upload_file("outputs/a.txt", __file__)
        run.complete()
        run.get_metrics()
        ids[project] = run.id
    return ids


@pytest.fixture()
def secured(stack: Stack, tmp_path: Path) -> tuple[TestClient, dict[str, str], KeyStore]:
    home = tmp_path / "secured-home"
    # The CLI writes the key store that the server reads.
    env_home = str(home)
    out = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "keys", "--home", env_home, "create", "--project", "alpha", "--name", "ci"],
        capture_output=True,
        text=True,
        check=True,
    )
    token_a = out.stdout.split(": ")[1].split()[0]
    store = KeyStore(home / "keys.json")
    token_b, _ = store.create("beta", "other")
    app = create_app(stack.settings.with_(home=home), stack.store)
    app.state.artifacts = stack.server.config.app.state.artifacts  # type: ignore[union-attr]  # same files as the stack
    return TestClient(app), {"alpha": token_a, "beta": token_b}, store


def _h(token: str) -> dict[str, str]:
    return {"X-API-Key": token}


def test_no_key_means_401_once_keys_exist(secured, two_projects) -> None:
    client, tokens, _ = secured
    assert client.get("/api/v1/runs").status_code == 401
    assert client.get("/api/v1/runs", headers=_h("rs_wrong")).status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/api/v1/runs", headers={"Authorization": f"Bearer {tokens['alpha']}"}).status_code == 200
    assert client.get(f"/api/v1/runs?api_key={tokens['alpha']}").status_code == 200


def test_a_key_reads_only_its_project(secured, two_projects) -> None:
    client, tokens, _ = secured
    a, b = two_projects["alpha"], two_projects["beta"]
    h = _h(tokens["alpha"])
    listed = client.get("/api/v1/runs?limit=10000", headers=h).json()["runs"]
    assert a in {r["id"] for r in listed} and b not in {r["id"] for r in listed}
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
        assert client.get(path, headers=h).status_code == 404, path
    assert client.get(f"/api/v1/runs/{a}/files/outputs/a.txt?api_key={tokens['alpha']}").status_code == 200
    compare = client.get(f"/api/v1/compare?runs={a},{b}&metrics=loss", headers=h).json()
    assert set(compare["metrics"].get("loss", {})) == {a}
    board = client.get("/api/v1/leaderboard?metric=loss&mode=min&limit=1000", headers=h).json()
    assert b not in {r["id"] for r in board["runs"]}
    rows = client.post("/api/v1/query", headers=h, json={"sql": "SELECT DISTINCT project FROM runs"}).json()["rows"]
    assert rows == [["alpha"]]


def test_a_key_writes_only_its_project(secured, two_projects) -> None:
    client, tokens, _ = secured
    h = _h(tokens["alpha"])
    event = {"v": 1, "id": "k:1", "kind": "tags", "run": two_projects["beta"], "project": "beta", "ts": 1.0, "tags": {"x": "y"}}
    response = client.post("/api/v1/events", headers=h, json={"events": [event]})
    assert response.status_code == 403 and "alpha" in response.json()["detail"]
    upload = client.put(f"/api/v1/runs/{two_projects['beta']}/files/evil.txt?project=beta", headers=h, content=b"x")
    assert upload.status_code == 403


def test_the_websocket_needs_a_key_and_sees_only_its_project(secured, two_projects) -> None:
    client, tokens, _ = secured
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ws") as ws:
            ws.receive_text()
    with client.websocket_connect(f"/ws?api_key={tokens['alpha']}") as ws:
        ws.send_json({"subscribe": {"run": two_projects["beta"]}})
        assert ws.receive_json()["type"] == "subscribed"
        snapshot = ws.receive_json()
        assert snapshot["type"] == "snapshot" and snapshot["runs"] == []
        ws.send_json({"subscribe": {"experiment": "exp-beta"}})
        ws.receive_json()
        assert ws.receive_json()["runs"] == []
        ws.send_json({"subscribe": {"run": two_projects["alpha"]}})
        ws.receive_json()
        assert [r["id"] for r in ws.receive_json()["runs"]] == [two_projects["alpha"]]


def test_revoked_key_is_refused(secured, two_projects) -> None:
    client, tokens, store = secured
    key_id = next(k["id"] for k in store.list() if k["project"] == "beta")
    assert client.get("/api/v1/runs", headers=_h(tokens["beta"])).status_code == 200
    assert store.revoke(key_id)
    assert client.get("/api/v1/runs", headers=_h(tokens["beta"])).status_code == 401


def test_without_keys_everything_is_open(stack: Stack, two_projects) -> None:
    import httpx

    assert httpx.get(f"{stack.api_url}/api/v1/runs/{two_projects['beta']}").status_code == 200
