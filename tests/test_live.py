"""WebSocket pushes: subscribe, catch-up, unsubscribe, and a slow subscriber."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from websockets.sync.client import ClientConnection, connect

from runstream import Experiment
from runstream.api.live import MAX_POINTS_PER_METRIC, LiveHub, Subscriber, compact_update, merge_update
from runstream.config import Settings
from runstream.storage.store import Store as RealStore
from tests.conftest import Stack, wait_until

# A hub whose test never reads the store (it routes and pumps only).
NO_STORE: RealStore = None  # type: ignore[assignment]


def _ws(stack: Stack) -> ClientConnection:
    return connect(stack.api_url.replace("http://", "ws://") + "/ws", open_timeout=10)


def _recv_until(ws: ClientConnection, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            break
        for item in msg["updates"] if msg.get("type") == "updates" else [msg]:
            seen.append(item)
            if predicate(item, seen):
                return seen
    raise AssertionError(f"condition not met; got {len(seen)} messages: {seen[-3:]}")


def _points(messages: list[dict[str, Any]], metric: str) -> list[int]:
    steps: list[int] = []
    for m in messages:
        if m.get("type") == "update" and metric in m.get("metrics", {}):
            steps.extend(m["metrics"][metric]["s"])
    return steps


def _hub_ready(stack: Stack) -> None:
    hub = stack.server.config.app.state.hub  # type: ignore[union-attr]
    wait_until(lambda: hub.ready.is_set(), 30, what="live hub ready")


def test_subscribe_snapshot_then_stream(stack: Stack, settings: Settings) -> None:
    _hub_ready(stack)
    run = Experiment("live", settings=settings).start_logging(name="live-1")
    run.log("loss", 1.0, step=0)
    run.get_metrics()  # stored before we subscribe: must appear in the snapshot
    with _ws(stack) as ws:
        ws.send(json.dumps({"subscribe": {"run": run.id}}))
        first = _recv_until(ws, lambda m, _: m.get("type") == "snapshot")
        snapshot = first[-1]
        assert snapshot["runs"][0]["id"] == run.id
        assert snapshot["runs"][0]["metrics"]["loss"]["count"] == 1
        assert any(m["type"] == "subscribed" for m in first)
        for step in range(1, 51):
            run.log("loss", 1.0 / (step + 1), step=step)
        run.flush()
        msgs = _recv_until(ws, lambda _, seen: _points(seen, "loss")[-1:] == [50])
        assert _points(msgs, "loss") == list(range(1, 51))
        assert all("server_time" in m and m["run"] == run.id for m in msgs if m["type"] == "update")
        run.complete()
        done = _recv_until(ws, lambda m, _: m.get("status") == "Completed")
        assert done[-1]["run"] == run.id


def test_experiment_subscription_and_unsubscribe(stack: Stack, settings: Settings) -> None:
    _hub_ready(stack)
    exp = Experiment("live-exp", settings=settings)
    a = exp.start_logging(name="a")
    a.log("x", 0.0)
    a.flush()
    with _ws(stack) as ws:
        ws.send(json.dumps({"subscribe": {"experiment": "live-exp"}}))
        _recv_until(ws, lambda m, _: m.get("type") == "snapshot")
        b = exp.start_logging(name="b")
        b.log_text("stdout", "hello from b")
        b.log("x", 1.0)
        b.flush()
        msgs = _recv_until(ws, lambda m, _: m.get("run") == b.id and any(line["line"] == "hello from b" for line in m.get("logs", [])))
        assert msgs[-1]["experiment"] == "live-exp"
        ws.send(json.dumps({"unsubscribe": {"experiment": "live-exp"}}))
        _recv_until(ws, lambda m, _: m.get("type") == "unsubscribed")
        a.log("x", 2.0)
        a.complete()
        b.complete()
        b.get_metrics()  # processed and published by now
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.5)


def test_bad_messages_get_an_error_not_a_disconnect(stack: Stack) -> None:
    with _ws(stack) as ws:
        for bad in ["not json", "[1,2]", json.dumps({"subscribe": {"run": ""}}), json.dumps({"subscribe": {"table": "x"}}), json.dumps({"what": 1})]:
            ws.send(bad)
            msg = json.loads(ws.recv(timeout=5))
            assert msg["type"] == "error" and msg["message"]
        ws.send(json.dumps({"ping": 1}))
        assert json.loads(ws.recv(timeout=5))["type"] == "pong"


def test_slow_subscriber_does_not_slow_the_others(stack: Stack, settings: Settings) -> None:
    _hub_ready(stack)
    hub: LiveHub = stack.server.config.app.state.hub  # type: ignore[union-attr]
    exp = Experiment("live-slow", settings=settings)
    runs = [exp.start_logging(name=f"slow-{i}") for i in range(5)]
    with _ws(stack) as slow, _ws(stack) as fast:
        for ws in (slow, fast):
            ws.send(json.dumps({"subscribe": {"experiment": "live-slow"}}))
        _recv_until(fast, lambda m, _: m.get("type") == "snapshot")
        # The slow client never reads again. Its socket buffers fill, its pump blocks,
        # and its queue must stay at one pending update per run.
        payload = "x" * 2000
        steps = 400
        for step in range(steps):
            for run in runs:
                run.log("loss", float(step), step=step)
                run.log_text("stdout", f"{step} {payload}")
            if step % 50 == 0:
                for run in runs:
                    run.flush()
        for run in runs:
            run.flush()
        last = {r.id: -1 for r in runs}

        def all_seen(msg: dict[str, Any], _: Any) -> bool:
            if msg.get("type") == "update" and "loss" in msg.get("metrics", {}):
                last[msg["run"]] = max(last[msg["run"]], msg["metrics"]["loss"]["s"][-1])
            return all(v == steps - 1 for v in last.values())

        _recv_until(fast, all_seen, timeout=30)
        slow_subs = [s for s in hub.subscribers if ("experiment", "live-slow") in s.targets]
        assert len(slow_subs) == 2
        assert all(len(s.pending) <= len(runs) for s in slow_subs)
    for run in runs:
        run.complete()


def test_coalescing_keeps_latest_state_bounded() -> None:
    pending = {"type": "update", "run": "r", "metrics": {"loss": {"s": [0], "v": [1.0], "n": 1}}, "status": "Running"}
    for i in range(1, 5000):
        merge_update(pending, {"type": "update", "run": "r", "metrics": {"loss": {"s": [i], "v": [float(i)], "n": 1}}, "server_time": i})
    merge_update(pending, {"type": "update", "run": "r", "status": "Completed", "logs": [{"stream": "stdout", "line": "bye", "ts": 1.0}]})
    loss = pending["metrics"]["loss"]
    assert len(loss["s"]) == MAX_POINTS_PER_METRIC and loss["s"][-1] == 4999 and loss["truncated"] is True
    assert loss["n"] == 5000 and pending["status"] == "Completed" and pending["logs"][-1]["line"] == "bye"


def test_subscriber_queue_blocks_without_blocking_dispatch() -> None:
    class BlockedSocket:
        def __init__(self) -> None:
            self.release = asyncio.Event()
            self.sent: list[str] = []

        async def send_text(self, text: str) -> None:
            await self.release.wait()
            self.sent.append(text)

    async def scenario() -> None:
        hub = LiveHub(Settings(), NO_STORE)
        sock = BlockedSocket()
        sub = Subscriber(sock, None, hub)  # type: ignore[arg-type]
        pump = asyncio.create_task(sub.pump())
        started = time.perf_counter()
        for i in range(10_000):
            sub.offer({"type": "update", "run": f"r{i % 3}", "metrics": {"m": {"s": [i], "v": [float(i)], "n": 1}}})
        assert time.perf_counter() - started < 2.0  # offering never waits for the socket
        await asyncio.sleep(0)
        assert len(sub.pending) <= 3
        sock.release.set()
        deadline = time.monotonic() + 5
        while (sub.pending or not sock.sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        pump.cancel()
        frames = [json.loads(t) for t in sock.sent]
        updates = [u for f in frames for u in (f["updates"] if f.get("type") == "updates" else [f])]
        assert max(u["metrics"]["m"]["s"][-1] for u in updates) >= 9997

    asyncio.run(scenario())


def test_compact_updates_stay_small_and_coalesce_to_the_true_range() -> None:
    one = compact_update({"type": "update", "run": "r", "metrics": {"loss": {"s": [7], "v": [5.0], "n": 1, "min": 5.0, "max": 5.0}}})
    assert one["metrics"]["loss"] == {"s": [7], "v": [5.0]} and one["compact"] is True
    many = compact_update({"type": "update", "run": "r", "metrics": {"loss": {"s": [8, 9], "v": [0.5, 1.0], "n": 2, "min": 0.5, "max": 1.0}}})
    assert many["metrics"]["loss"] == {"s": [9], "v": [1.0], "n": 2, "min": 0.5}
    pending = {**one, "metrics": {k: {**v, "s": list(v["s"]), "v": list(v["v"])} for k, v in one["metrics"].items()}}
    merge_update(pending, many)
    merge_update(pending, compact_update({"type": "update", "run": "r", "metrics": {"loss": {"s": [10], "v": [3.0], "n": 1}}}))
    assert pending["metrics"]["loss"] == {"s": [10], "v": [3.0], "n": 4, "min": 0.5, "max": 5.0}


def test_experiment_watchers_share_one_frame_per_batch_and_coalesce_once_behind() -> None:
    from runstream.api.live import MAX_QUEUED_FRAMES

    class Sock:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send_text(self, text: str) -> None:
            self.sent.append(text)

    hub = LiveHub(Settings(), NO_STORE)
    socks = [Sock() for _ in range(3)]
    a, b, both = (Subscriber(sock, None, hub) for sock in socks)  # type: ignore[arg-type]
    for sub in (a, b, both):
        hub.subscribe(sub, ("experiment", "e"))
    hub.subscribe(both, ("run", "r1"))

    def batch(step: int) -> list[dict[str, Any]]:
        return [
            {"type": "update", "run": f"r{i}", "project": "p", "experiment": "e", "metrics": {"loss": {"s": [step], "v": [float(step)], "n": 1}}}
            for i in range(3)
        ]

    hub.dispatch_batch(batch(0))
    assert len(a.frames) == len(b.frames) == 1 and a.frames[0][1] is b.frames[0][1]  # encoded once, shared
    shared = json.loads(a.frames[0][1])
    assert [u["run"] for u in shared["updates"]] == ["r0", "r1", "r2"] and all(u["compact"] for u in shared["updates"])
    # A watcher of r1 itself gets r1's full update and the others' compact ones, per run.
    assert not both.frames and set(both.pending) == {"r0", "r1", "r2"} and "compact" not in both.pending["r1"]

    # Nobody reads a's socket: after MAX_QUEUED_FRAMES frames its updates coalesce per run.
    for step in range(1, MAX_QUEUED_FRAMES + 5):
        hub.dispatch_batch(batch(step))
    assert len(a.frames) == MAX_QUEUED_FRAMES and set(a.pending) == {"r0", "r1", "r2"}
    assert a.pending["r0"]["metrics"]["loss"]["s"] == [MAX_QUEUED_FRAMES + 4] and a.pending["r0"]["metrics"]["loss"]["n"] == 5

    async def drain() -> None:
        pump = asyncio.create_task(a.pump())
        for _ in range(1000):  # until the pump has sent everything queued (a bounded number of loop turns)
            if not a.frames and not a.pending:
                break
            await asyncio.sleep(0)
        pump.cancel()
        assert not a.frames and not a.pending

    asyncio.run(drain())
    sent = [json.loads(t) for t in socks[0].sent]
    steps = [u["metrics"]["loss"]["s"][-1] for f in sent for u in f["updates"] if u["run"] == "r0"]
    assert steps == [*range(MAX_QUEUED_FRAMES), MAX_QUEUED_FRAMES + 4]  # in order, the lagging part as the latest state


def test_an_api_without_the_processor_gets_updates_from_the_live_topic_and_the_local_hub_gets_each_once(stack: Stack, settings: Settings) -> None:
    """`runstream up` hands its processor's updates to its own hub in-process; another api
    instance reads them from the live topic, and the first hub skips its own copies there."""
    import uvicorn

    from runstream.api.app import create_app, listen_socket, server_config
    from tests.conftest import free_port

    _hub_ready(stack)
    local = stack.server.config.app.state.hub  # type: ignore[union-attr]
    proc = stack.processor
    assert proc is not None and proc.origin in local.local_origins
    other_app = create_app(stack.settings, stack.store)
    port = free_port()
    other = uvicorn.Server(server_config(other_app, "127.0.0.1", port, lifespan="on"))
    stack.loop.call_soon_threadsafe(lambda: stack.loop.create_task(other.serve(sockets=[listen_socket("127.0.0.1", port)])))
    try:
        wait_until(lambda: other.started and other_app.state.hub.ready.is_set(), 30, what="second api and its hub")
        assert not other_app.state.hub.local_origins
        run = Experiment("live-elsewhere", settings=settings).start_logging(name="remote-1")
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            ws.send(json.dumps({"subscribe": {"run": run.id}}))
            _recv_until(ws, lambda m, _: m.get("type") == "snapshot")
            before_local, before_published = local.stats["updates_in"], proc.stats.live_messages
            for step in range(5):
                run.log("loss", float(step), step=step)
            run.flush()
            got = _recv_until(ws, lambda m, seen: 4 in _points(seen, "loss"))
        assert sorted(set(_points(got, "loss"))) == [0, 1, 2, 3, 4]
        # By now the topic copies have reached both hubs; the local one counted each update once.
        wait_until(lambda: other_app.state.hub.stats["updates_in"] >= proc.stats.live_messages - before_published, 10, what="topic copies read")
        assert local.stats["updates_in"] - before_local == proc.stats.live_messages - before_published
        run.complete()
    finally:
        other.should_exit = True
        wait_until(lambda: not other.started or other.should_exit, 10)


def test_updates_that_arrive_while_the_snapshot_is_read_follow_it() -> None:
    """The snapshot is read after the subscription is registered; an update dispatched in
    between must reach the client after the snapshot, or the (older) snapshot overwrites it
    (a runs list showing Running for a run that completed while it subscribed)."""
    from types import SimpleNamespace

    from starlette.websockets import WebSocketDisconnect

    from runstream.api.live import websocket_endpoint

    class Store:
        def __init__(self) -> None:
            self.reading = asyncio.Event()
            self.release = asyncio.Event()

        async def call(self, fn: Any, *args: Any) -> Any:
            self.reading.set()
            await self.release.wait()
            return [{"id": "r1", "status": "Running"}]  # read before the run completed

    class Socket:
        def __init__(self, app: Any) -> None:
            self.app = app
            self.query_params: dict[str, str] = {}
            self.headers: dict[str, str] = {}
            self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
            self.sent: list[dict[str, Any]] = []
            self.got = asyncio.Event()

        async def accept(self) -> None:
            pass

        async def receive_text(self) -> str:
            text = await self.inbox.get()
            if text is None:
                raise WebSocketDisconnect()
            return text

        async def send_text(self, text: str) -> None:
            self.sent.append(json.loads(text))
            self.got.set()

    async def scenario() -> None:
        hub = LiveHub(Settings(), Store())  # type: ignore[arg-type]
        sock = Socket(SimpleNamespace(state=SimpleNamespace(hub=hub, auth=None)))
        endpoint = asyncio.create_task(websocket_endpoint(sock))  # type: ignore[arg-type]
        await sock.inbox.put(json.dumps({"subscribe": {"experiment": "e"}}))
        await asyncio.wait_for(hub.store.reading.wait(), 5)  # type: ignore[attr-defined]
        hub.dispatch_batch([{"type": "update", "run": "r1", "project": "p", "experiment": "e", "status": "Completed"}])
        for _ in range(100):  # let the pump run: it must hold the update
            await asyncio.sleep(0)
        assert sock.sent == []
        hub.store.release.set()  # type: ignore[attr-defined]
        while len(sock.sent) < 3:
            sock.got.clear()
            await asyncio.wait_for(sock.got.wait(), 5)
        await sock.inbox.put(None)
        await asyncio.wait_for(endpoint, 5)
        assert [m["type"] for m in sock.sent] == ["subscribed", "snapshot", "update"]
        assert sock.sent[2]["status"] == "Completed"
        assert not hub.subscribers and not hub.by_experiment

    asyncio.run(scenario())


def test_a_snapshot_keys_summaries_by_project_and_run_id(stack: Stack, settings: Settings, kafka_bootstrap: str) -> None:
    """Two projects' runs with one run id: an experiment's snapshot gives each its own metrics."""
    run_id, experiment, now = f"shared-{uuid.uuid4().hex[:8]}", f"tenancy-{uuid.uuid4().hex[:6]}", time.time()
    events = []
    for project, loss in (("tenant-a", 1.0), ("tenant-b", 2.0)):
        common = {"v": 1, "run": run_id, "project": project, "ts": now}
        events.append({**common, "id": f"{project}:start", "kind": "run_start", "experiment": experiment, "name": project})
        events.append({**common, "id": f"{project}:m", "kind": "metrics", "names": ["loss"], "m": [0, 0], "s": [0, 1], "x": [loss, loss + 0.5]})

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for event in events:
                await producer.send_and_wait(settings.events_topic, orjson.dumps(event), key=run_id.encode())
        finally:
            await producer.stop()

    stack.run(send())
    sql = "SELECT count() FROM metric_summaries WHERE run_id = {r:String} GROUP BY project"
    wait_until(lambda: len(stack.store.query_rows(sql, {"r": run_id})) == 2, 60, what="both projects' summaries stored")
    hub = stack.server.config.app.state.hub  # type: ignore[union-attr]
    runs = {r["project"]: r for r in hub.snapshot(("experiment", experiment), None)}
    assert set(runs) == {"tenant-a", "tenant-b"}
    assert runs["tenant-a"]["metrics"]["loss"]["last"] == 1.5 and runs["tenant-a"]["metrics"]["loss"]["count"] == 2
    assert runs["tenant-b"]["metrics"]["loss"]["last"] == 2.5 and runs["tenant-b"]["metrics"]["loss"]["min"] == 2.0
    # A key's scope reads only its own project's run.
    scoped = hub.snapshot(("experiment", experiment), "tenant-b")
    assert [(r["project"], r["metrics"]["loss"]["max"]) for r in scoped] == [("tenant-b", 2.5)]
