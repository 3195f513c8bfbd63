"""POST /api/v1/events: good batches land in ClickHouse; every bad input gets the right 4xx and a message."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from runstream.api import gateway
from runstream.api.app import create_app
from tests.conftest import Stack, wait_until


def _ev(kind: str, run: str, **payload: Any) -> dict[str, Any]:
    return {"v": 1, "id": f"gw-{uuid.uuid4().hex}", "kind": kind, "run": run, "project": "gw", "ts": time.time(), **payload}


def _metrics(run: str, n: int = 3, **extra: Any) -> dict[str, Any]:
    return _ev("metrics", run, names=["loss"], m=[0] * n, s=list(range(n)), x=[float(i) for i in range(n)], **extra)


def _post(stack: Stack, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return httpx.post(f"{stack.api_url}/api/v1/events", content=content, headers={"Content-Type": "application/json"}, timeout=30)


def _count(stack: Stack, table: str, run: str) -> int:
    return int(stack.store.query_rows(f"SELECT count() FROM {table} WHERE run_id = {{r:String}}", {"r": run})[0][0])


def test_a_good_batch_is_accepted_and_lands_in_clickhouse(stack: Stack) -> None:
    run = f"gw-{uuid.uuid4().hex[:12]}"
    metrics = _metrics(run, 4)
    metrics["x"][2], metrics["nf"] = None, [[2, "inf"]]  # a diverging value, sent the only way JSON allows
    events = [
        _ev("run_start", run, experiment="gateway", name="through-http", tags={"via": "gateway"}, params={"lr": 0.1}),
        metrics,
        _ev("table", run, name="pr", columns={"x": [1, 2], "y": [0.5, "n/a"]}),
        _ev("log", run, stream="stdout", lines=["hello", "world"]),
        _ev("tags", run, tags={"done": True}),
        _ev("run_end", run, status="Completed"),
    ]
    response = _post(stack, {"events": events})
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 6, "points": 4 + 4 + 2}
    sql = "SELECT experiment, name, status, tags['via'], tags['done'], params['lr'] FROM runs FINAL WHERE run_id = {r:String}"
    row = wait_until(
        lambda: stack.store.query_rows(sql, {"r": run}) == [("gateway", "through-http", "Completed", "gateway", "true", "0.1")], what="run row"
    )
    assert row
    wait_until(lambda: _count(stack, "metric_points", run) == 4 and _count(stack, "run_logs", run) == 2, what="points and logs")
    assert _count(stack, "table_cells", run) == 4
    values = stack.store.query_rows("SELECT value FROM metric_points WHERE run_id = {r:String} ORDER BY step", {"r": run})
    assert [v for (v,) in values] == [0.0, 1.0, float("inf"), 3.0]
    # The same batch again (a client retry after a timeout) is harmless: event ids are deduplicated.
    assert _post(stack, {"events": events}).status_code == 202
    time.sleep(1.0)
    assert _count(stack, "metric_points", run) == 4


def test_an_unknown_run_is_created_in_default_and_completed_by_a_late_start(stack: Stack) -> None:
    """Documented rule (docs/events.md, Edge rules): points for a run with no run_start are kept, not refused."""
    run = f"gw-{uuid.uuid4().hex[:12]}"
    assert _post(stack, {"events": [_metrics(run, 5)]}).status_code == 202
    sql = "SELECT experiment, status FROM runs FINAL WHERE run_id = {r:String}"
    wait_until(lambda: stack.store.query_rows(sql, {"r": run}) == [("Default", "Running")], what="run in Default")
    wait_until(lambda: _count(stack, "metric_points", run) == 5, what="points of the unknown run")
    assert _post(stack, {"events": [_ev("run_start", run, experiment="late")]}).status_code == 202
    wait_until(lambda: stack.store.query_rows(sql, {"r": run}) == [("late", "Running")], what="late run_start")


BAD: list[tuple[str, Any, int, str]] = [
    ("not JSON", b"{events: [", 400, "not valid JSON"),
    ("NaN literal", b'{"events": [{"x": NaN}]}', 400, "not valid JSON"),
    ("number beyond float64", b'{"events": [{"x": 1e400}]}', 400, "infinity"),
    ("lone surrogate", b'{"events": [{"run": "\\ud800"}]}', 400, "surrogate"),
    ("body not an object", [1, 2], 422, '{"events": [...]}'),
    ("no events key", {"event": []}, 422, '{"events": [...]}'),
    ("events not an array", {"events": {"a": 1}}, 422, "'events' must be an array"),
    ("event not an object", {"events": ["x"]}, 422, "event 0: must be an object"),
    ("wrong version", {"events": [{**_metrics("r"), "v": 2}]}, 422, "unsupported wire version 2"),
    ("unknown kind", {"events": [{**_metrics("r"), "kind": "explode"}]}, 422, "unknown event kind 'explode'"),
    ("missing run", {"events": [{k: v for k, v in _metrics("r").items() if k != "run"}]}, 422, "run id must be a string"),
    ("run id too long", {"events": [_metrics("r" * 256)]}, 422, "the limit is 255"),
    ("metric name too long", {"events": [{**_metrics("r"), "names": ["n" * 300]}]}, 422, "metric name is 300 characters long"),
    ("empty metric name", {"events": [{**_metrics("r"), "names": [" "]}]}, 422, "must not be empty"),
    ("NUL in a name", {"events": [{**_metrics("r"), "names": ["a\x00b"]}]}, 422, "NUL"),
    ("value of wrong type", {"events": [{**_metrics("r", 1), "x": ["high"]}]}, 422, "'x' must be an array of numbers"),
    ("bool value", {"events": [{**_metrics("r", 1), "x": [True]}]}, 422, "'x'"),
    ("null without sv/nf", {"events": [{**_metrics("r", 1), "x": [None]}]}, 422, "neither 'sv' nor 'nf'"),
    ("bad nf token", {"events": [{**_metrics("r", 1), "x": [None], "nf": [[0, "infinity"]]}]}, 422, "'nf' token must be one of"),
    ("nf index out of range", {"events": [{**_metrics("r", 1), "nf": [[5, "nan"]]}]}, 422, "out of range"),
    ("m outside names", {"events": [{**_metrics("r", 1), "m": [3]}]}, 422, "'m' holds an index outside 'names'"),
    ("arrays of different length", {"events": [{**_metrics("r", 2), "s": [0]}]}, 422, "'s' has 1 items; expected 2"),
    ("step beyond int64", {"events": [{**_metrics("r", 1), "s": [2**63]}]}, 422, "64-bit"),
    ("fractional step", {"events": [{**_metrics("r", 1), "s": [1.5]}]}, 422, "'s' must be an array of integers"),
    ("ts not a number", {"events": [{**_metrics("r"), "ts": "now"}]}, 422, "'ts' must be a number"),
    ("ts far in the future", {"events": [{**_metrics("r"), "ts": 1e300}]}, 422, "'ts' must be a number of seconds since the epoch"),
    ("negative ts", {"events": [{**_metrics("r"), "ts": -5}]}, 422, "'ts'"),
    ("per-point time null", {"events": [{**_metrics("r", 1), "t": [None]}]}, 422, "'t' must hold seconds"),
    ("string too long", {"events": [_ev("tags", "r", tags={"k": "v" * 5000})]}, 422, "longer than 4096"),
    ("tag value an object", {"events": [_ev("tags", "r", tags={"k": {"a": 1}})]}, 422, "must be a string or number, got dict"),
    ("bad status", {"events": [_ev("run_end", "r", status="Running")]}, 422, "'status' must be one of Completed"),
    ("ragged table", {"events": [_ev("table", "r", name="t", columns={"a": [1, 2], "b": [1]})]}, 422, "column 'b' has 1 values"),
    ("log lines not strings", {"events": [_ev("log", "r", stream="stdout", lines=[1])]}, 422, "'lines' must contain strings"),
    ("file path escaping", {"events": [_ev("file", "r", path="../../etc/passwd")]}, 422, "relative path without '..'"),
    ("index of the bad event", {"events": [_metrics("r"), {**_metrics("r"), "kind": "?"}]}, 422, "event 1:"),
]


@pytest.mark.parametrize("body,status,message", [pytest.param(b, s, m, id=name) for name, b, s, m in BAD])
def test_bad_input_gets_a_4xx_with_a_message(stack: Stack, body: Any, status: int, message: str) -> None:
    response = _post(stack, body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_a_rejected_batch_produces_nothing(stack: Stack) -> None:
    gw = stack.server.config.app.state.gateway  # type: ignore[union-attr]
    accepted, rejected = gw.events_in, gw.rejected
    run = f"gw-{uuid.uuid4().hex[:12]}"
    assert _post(stack, {"events": [_metrics(run), {**_metrics(run), "x": ["bad", "bad", "bad"]}]}).status_code == 422
    assert (gw.events_in, gw.rejected) == (accepted, rejected + 1)
    metrics = httpx.get(f"{stack.api_url}/metrics").text
    assert f"runstream_gateway_events_rejected_total {float(rejected + 1)}" in metrics


def test_a_run_id_of_another_project_is_refused(stack: Stack) -> None:
    run = f"gw-{uuid.uuid4().hex[:12]}"
    assert _post(stack, {"events": [_ev("run_start", run, experiment="owned")]}).status_code == 202
    wait_until(lambda: _count(stack, "runs", run) > 0, what="run row")
    response = _post(stack, {"events": [{**_ev("run_end", run, status="Failed"), "project": "intruder"}]})
    assert response.status_code == 409 and "another project" in response.json()["detail"]
    mixed = [_ev("tags", "shared-id", tags={"a": 1}), {**_ev("tags", "shared-id", tags={"a": 1}), "project": "other"}]
    assert _post(stack, {"events": mixed}).status_code == 409


@pytest.fixture()
def small_limits(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """An app of its own with tiny limits, so 413 cases need no megabytes."""
    monkeypatch.setattr(gateway, "MAX_BODY_BYTES", 4000)
    monkeypatch.setattr(gateway, "MAX_EVENTS_PER_REQUEST", 5)
    monkeypatch.setattr(gateway, "MAX_POINTS_PER_REQUEST", 50)
    monkeypatch.setattr(gateway, "MAX_POINTS_PER_EVENT", 20)
    yield TestClient(create_app(stack.settings.with_(home=tmp_path), stack.store))


@pytest.mark.parametrize(
    "events,message",
    [
        pytest.param([_metrics("r", 1) for _ in range(6)], "6 events in one request; the limit is 5", id="too many events"),
        pytest.param([_metrics("r", 21)], "event 0: 21 points in one event; the limit is 20", id="too many points in an event"),
        pytest.param([_metrics("r", 20) for _ in range(3)], "60 points in one request; the limit is 50", id="too many points in a request"),
        pytest.param(
            [_ev("metrics", "r", names=["a", "b"], rows=[{"m": [0, 1], "s": list(range(11)), "x": [1.0] * 22}])],
            "event 0: 22 points in one event; the limit is 20",
            id="too many points in an event's frames",
        ),
    ],
)
def test_too_much_in_one_request_is_413(small_limits: TestClient, events: list[dict[str, Any]], message: str) -> None:
    response = small_limits.post("/api/v1/events", json={"events": events})
    assert response.status_code == 413 and message in response.json()["detail"], response.text


def test_a_body_too_large_is_413_even_without_content_length(small_limits: TestClient) -> None:
    big = {"events": [_ev("log", "r", stream="stdout", lines=["x" * 5000])]}
    response = small_limits.post("/api/v1/events", json=big)
    assert response.status_code == 413 and "4000-byte limit" in response.json()["detail"]
    body = httpx.Request("POST", "/", json=big).content
    chunked = small_limits.post("/api/v1/events", content=iter([body[:3000], body[3000:]]), headers={"Content-Type": "application/json"})
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and "limit" in chunked.json()["detail"]


@pytest.mark.parametrize("method,path", [("POST", "/api/v1/events"), ("PUT", "/api/v1/runs/r/files/big.bin")])
def test_content_length_is_checked_before_the_body_is_read(stack: Stack, method: str, path: str) -> None:
    """A client announcing a terabyte gets 413 at once; the server does not wait for (or buffer) the body."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {10**12}\r\n\r\n".encode())
        answer = ""
        while "limit" not in answer and (chunk := sock.recv(4096)):
            answer += chunk.decode()
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "limit" in answer
