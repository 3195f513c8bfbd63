"""Live pushes: the live topic fanned out to WebSocket subscribers.

Every api instance reads the live topic on its own (no consumer group, from
the latest offset) and routes each update to the subscribers of its run or
experiment. A subscriber's queue holds at most one pending update per run:
when the browser reads slowly, new updates merge into the pending one (points
appended up to a cap, newest status, newest log lines), so memory stays
bounded, the subscriber gets the latest state, and nobody else waits for it.

The messages are runstream.live's LiveUpdate and frames. They arrive from the
topic as decoded JSON, so the hub checks their shape as it routes them and
merges them as plain dicts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from runstream import kafka
from runstream.api import queries
from runstream.config import Settings
from runstream.errors import NotFound
from runstream.lifecycle import CRASHED, LIVE_STATUSES, crash_after_s, status_sql
from runstream.live import ORIGIN_HEADER
from runstream.storage.store import Store

log = logging.getLogger("runstream.live")

MAX_PENDING_RUNS = 512  # per subscriber; beyond it the oldest pending run update is dropped
MAX_QUEUED_FRAMES = 4  # shared frames a subscriber may have queued before its updates coalesce per run
MAX_POINTS_PER_METRIC = 2000
MAX_LOG_LINES = 500
SNAPSHOT_RUNS = 1000

Target = tuple[str, str]  # ("run", id) or ("experiment", name)


def _range(slot: dict[str, Any]) -> tuple[float | None, float | None]:
    """A slot's finite min and max: its own fields (which cover its values when both are
    there: the processor sets them so, and merging keeps them so), else from its values."""
    lo, hi = slot.get("min"), slot.get("max")
    if lo is not None and hi is not None:
        return lo, hi
    finite = [x for x in slot.get("v", ()) if isinstance(x, (int, float)) and x == x]
    if finite:
        lo = min(finite) if lo is None else min(lo, *finite)
        hi = max(finite) if hi is None else max(hi, *finite)
    return lo, hi


def merge_update(into: dict[str, Any], new: dict[str, Any]) -> bool:
    """Merge `new` into the pending `into` for the same run; True if something was cut."""
    cut = False
    compact = bool(into.get("compact"))
    for name, slot in new.get("metrics", {}).items():
        metrics = into.setdefault("metrics", {})
        old = metrics.get(name)
        if old is None:
            metrics[name] = {k: (list(v) if isinstance(v, list) else v) for k, v in slot.items()}
            if slot.get("truncated"):
                metrics[name]["truncated"] = True
            continue
        # The range first: a compact update keeps only its newest point, so the points
        # it drops must be counted in min/max here.
        (lo1, hi1), (lo2, hi2) = _range(old), _range(slot)
        los, his = [x for x in (lo1, lo2) if x is not None], [x for x in (hi1, hi2) if x is not None]
        if los:
            old["min"] = min(los)
        if his:
            old["max"] = max(his)
        old["n"] = old.get("n", len(old["s"])) + slot.get("n", len(slot["s"]))
        old["s"].extend(slot["s"])
        old["v"].extend(slot["v"])
        if slot.get("truncated"):
            old["truncated"] = True
        if compact:
            del old["s"][:-1]
            del old["v"][:-1]
        elif len(old["s"]) > MAX_POINTS_PER_METRIC:
            del old["s"][:-MAX_POINTS_PER_METRIC]
            del old["v"][:-MAX_POINTS_PER_METRIC]
            old["truncated"] = True
            cut = True
    if new.get("logs"):
        logs = into.setdefault("logs", [])
        logs.extend(new["logs"])
        if len(logs) > MAX_LOG_LINES:
            del logs[:-MAX_LOG_LINES]
            into["logs_truncated"] = True
            cut = True
    for key in ("tables", "files"):
        if new.get(key):
            into.setdefault(key, []).extend(x for x in new[key] if x not in into.get(key, []))
    for key in ("status", "server_time", "experiment", "project"):
        if key in new:
            into[key] = new[key]
    if new.get("meta"):
        into["meta"] = True
    into["coalesced"] = True
    return cut


def compact_update(update: dict[str, Any]) -> dict[str, Any]:
    """What a runs list needs: per metric the newest point, and the batch's min/max only
    when they differ from it (most live batches carry one point per metric). Experiment
    watchers get these for every run, so their size is most of the api's traffic."""
    metrics = update.get("metrics")
    if not metrics:
        return update
    out = dict(update)
    out["compact"] = True
    out["metrics"] = {}
    for name, slot in metrics.items():
        small: dict[str, Any] = {"s": slot["s"][-1:], "v": slot["v"][-1:]}
        n = slot.get("n", len(slot["s"]))
        if n != 1:
            small["n"] = n
        last = small["v"][0] if small["v"] else None
        for key in ("min", "max"):
            if key in slot and slot[key] != last:
                small[key] = slot[key]
        out["metrics"][name] = small
    if "logs" in out:
        out["logs"] = out["logs"][-20:]
    return out


class Subscriber:
    def __init__(self, ws: WebSocket, project: str | None, hub: LiveHub) -> None:
        self.ws = ws
        self.project = project
        self.hub = hub
        self.targets: set[Target] = set()
        self.pending: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Encoded text of pending updates that were not merged: shared by every subscriber.
        self.encoded: dict[str, str] = {}
        self.control: list[dict[str, Any]] = []
        # Whole frames shared by every watcher of an experiment (see LiveHub.dispatch_batch):
        # (experiment, text, updates in it); queued only while nothing is pending.
        self.frames: deque[tuple[str, str, int]] = deque()
        self.wake = asyncio.Event()
        self.sent = 0
        # Subscriptions whose snapshot is being read: updates wait (queued, coalescing) so that
        # none reaches the client before the snapshot it would otherwise be overwritten by.
        self.catching_up = 0

    def offer_frame(self, experiment: str, frame: str, updates: list[dict[str, Any]], texts: list[str]) -> None:
        """A batch's compact updates for one experiment: the shared frame as it is while this
        subscriber keeps up, else each update into its per-run pending state (coalescing)."""
        if not self.pending and len(self.frames) < MAX_QUEUED_FRAMES:
            self.frames.append((experiment, frame, len(updates)))
            self.wake.set()
            return
        for update, text in zip(updates, texts):
            self.offer(update, text)

    def offer(self, update: dict[str, Any], encoded: str | None = None) -> None:
        run = update["run"]
        pending = self.pending.get(run)
        if pending is None:
            if len(self.pending) >= MAX_PENDING_RUNS:
                old, _ = self.pending.popitem(last=False)
                self.encoded.pop(old, None)
                self.hub.stats["dropped_by_coalescing"] += 1
            self.pending[run] = update
            if encoded is not None:
                self.encoded[run] = encoded
        else:
            self.hub.stats["coalesced"] += 1
            if run in self.encoded or pending is update:
                self.encoded.pop(run, None)
                # First merge: copy, since the original is shared with other subscribers.
                pending = {**pending, "metrics": {k: {**v, "s": list(v["s"]), "v": list(v["v"])} for k, v in pending.get("metrics", {}).items()}}
                for key in ("logs", "tables", "files"):
                    if key in pending:
                        pending[key] = list(pending[key])
                self.pending[run] = pending
            if merge_update(pending, update):
                self.hub.stats["dropped_by_coalescing"] += 1
        self.wake.set()

    def send_control(self, message: dict[str, Any]) -> None:
        self.control.append(message)
        self.wake.set()

    async def pump(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while True:
                if self.control:
                    text = orjson.dumps(self.control.pop(0)).decode()
                elif self.catching_up or not (self.frames or self.pending):
                    break
                elif self.frames:  # older than anything pending: frames are queued only while nothing is
                    _, text, count = self.frames.popleft()
                    self.hub.stats["updates_sent"] += count
                else:
                    # Everything pending goes in one frame: one send per batch, not per run.
                    texts = []
                    while self.pending:
                        run, message = self.pending.popitem(last=False)
                        texts.append(self.encoded.pop(run, "") or orjson.dumps(message).decode())
                    text = texts[0] if len(texts) == 1 else '{"type":"updates","updates":[' + ",".join(texts) + "]}"
                    self.hub.stats["updates_sent"] += len(texts)
                await self.ws.send_text(text)
                self.sent += 1
                self.hub.stats["messages_sent"] += 1


class LiveHub:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.by_run: dict[str, set[Subscriber]] = {}
        self.by_experiment: dict[str, set[Subscriber]] = {}
        self.subscribers: set[Subscriber] = set()
        self.stats = {"updates_in": 0, "messages_sent": 0, "updates_sent": 0, "coalesced": 0, "dropped_by_coalescing": 0}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.local_origins: set[bytes] = set()  # processors in this process deliver directly (see attach)
        # Live runs shown Crashed at the last sweep: nothing arrives when a process dies, so
        # the hub looks (see sweep_crashed) and pushes the change either way.
        self.crashed: set[tuple[str, str]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def attach(self, processor: Any) -> None:
        """Take a processor's live updates in-process; its copies on the live topic are skipped."""
        self.local_origins.add(processor.origin)
        processor.live_sinks.append(self.dispatch_batch)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="runstream-live-hub")
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="runstream-live-crashed")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, crash_after_s() / 4))
            try:
                updates = await self.store.call(self.sweep_crashed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # storage away: try again at the next sweep
                log.debug("crashed-run sweep failed: %s", exc)
                continue
            if updates:
                self.dispatch_batch(updates)

    def sweep_crashed(self) -> list[dict[str, Any]]:
        """Status updates for live runs that became Crashed since the last sweep, or whose
        heartbeats resumed (runs the worker thread)."""
        rows = self.store.query_rows(
            f"SELECT project, run_id, experiment, {status_sql()} FROM runs FINAL WHERE status IN {{live:Array(String)}}",
            {"live": list(LIVE_STATUSES)},
        )
        now = time.time()
        crashed: set[tuple[str, str]] = set()
        updates: list[dict[str, Any]] = []
        for project, run, experiment, shown in rows:
            key = (project, run)
            if shown == CRASHED:
                crashed.add(key)
            if (shown == CRASHED) != (key in self.crashed):
                updates.append({"type": "update", "run": run, "project": project, "experiment": experiment, "status": shown, "server_time": now})
        self.crashed = crashed
        return updates

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._consumer is not None:
            try:
                await self._consumer.stop()
            except Exception:
                pass

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                self._consumer = kafka.live_consumer(self.settings)
                await self._consumer.start()
                # Resolve "latest" now so updates published after start-up are never skipped.
                await self._consumer.getmany(timeout_ms=0)
                for tp in self._consumer.assignment():
                    await self._consumer.position(tp)
                self.ready.set()
                delay = 0.5
                while True:
                    batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
                    for messages in batches.values():
                        for msg in messages:
                            if self.local_origins and any(k == ORIGIN_HEADER and v in self.local_origins for k, v in msg.headers or ()):
                                continue
                            try:
                                message = orjson.loads(msg.value)
                            except orjson.JSONDecodeError:
                                continue
                            if isinstance(message, dict) and message.get("type") == "batch":
                                self.dispatch_batch(message.get("updates", []))
                            elif isinstance(message, dict):  # a single update
                                self.dispatch_batch([message])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live topic consumer failed (%s); reconnecting", exc)
                if self._consumer is not None:
                    try:
                        await self._consumer.stop()
                    except Exception:
                        pass
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def dispatch_batch(self, updates: list[dict[str, Any]]) -> None:
        """A processor batch: run subscribers get each run's update; experiment watchers get
        the batch's compact updates of their experiment as one frame, encoded once and shared
        (a runs list of 100 live runs: one offer per watcher per batch, not 100)."""
        per_experiment: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
        for update in updates:
            if not isinstance(update, dict):
                continue
            self._dispatch_to_runs(update)
            if "run" in update and update.get("experiment", "") in self.by_experiment:
                per_experiment.setdefault((update.get("experiment", ""), update.get("project")), []).append(update)
        for (experiment, project), group in per_experiment.items():
            compacts: list[dict[str, Any]] | None = None
            texts: list[str] = []
            frame = ""
            for sub in self.by_experiment.get(experiment, ()):
                if sub.project is not None and sub.project != project:
                    continue
                if compacts is None:
                    compacts = [compact_update(u) for u in group]
                    texts = [orjson.dumps(c).decode() for c in compacts]
                    frame = texts[0] if len(texts) == 1 else '{"type":"updates","updates":[' + ",".join(texts) + "]}"
                if any(("run", u["run"]) in sub.targets for u in group):
                    # It watches some of these runs on their own: those get their full updates (above).
                    for c, text in zip(compacts, texts):
                        if ("run", c["run"]) not in sub.targets:
                            sub.offer(c, text)
                else:
                    sub.offer_frame(experiment, frame, compacts, texts)

    def _dispatch_to_runs(self, update: dict[str, Any]) -> None:
        self.stats["updates_in"] += 1
        if "run" not in update:
            return
        project = update.get("project")
        encoded: str | None = None
        for sub in self.by_run.get(update["run"], ()):
            if sub.project is None or sub.project == project:
                if encoded is None:
                    encoded = orjson.dumps(update).decode()
                sub.offer(update, encoded)

    def _index(self, target: Target) -> dict[str, set[Subscriber]]:
        return self.by_run if target[0] == "run" else self.by_experiment

    def subscribe(self, sub: Subscriber, target: Target) -> None:
        sub.targets.add(target)
        self._index(target).setdefault(target[1], set()).add(sub)

    def unsubscribe(self, sub: Subscriber, target: Target) -> None:
        sub.targets.discard(target)
        index = self._index(target)
        subs = index.get(target[1])
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del index[target[1]]

    def remove(self, sub: Subscriber) -> None:
        for target in list(sub.targets):
            self.unsubscribe(sub, target)
        self.subscribers.discard(sub)

    def snapshot(self, target: Target, project: str | None) -> list[dict[str, Any]]:
        """Current state of the target's runs (runs the worker thread)."""
        if target[0] == "run":
            try:
                run = queries.run_state(self.store, target[1], project)
            except NotFound:
                return []
            return [{k: run[k] for k in ("id", "name", "experiment", "project", "status", "last_seen", "created_at", "ended_at", "metrics", "tags")}]
        listing = queries.list_runs(self.store, project, experiment=target[1], order_by="-created_at", limit=SNAPSHOT_RUNS)
        runs = listing["runs"]
        if runs:
            # Keyed by (project, run id): a run id is unique only within its project.
            rows = self.store.query_dicts(
                f"SELECT project, run_id, metric, {queries.SUMMARY_SELECT} FROM metric_summaries "
                "WHERE run_id IN {ids:Array(String)} AND project IN {projects:Array(String)} GROUP BY project, run_id, metric",
                {"ids": sorted({r["id"] for r in runs}), "projects": sorted({r["project"] for r in runs})},
            )
            summaries: dict[tuple[str, str], dict[str, Any]] = {}
            for r in rows:
                slot = {k: queries.clean(r[k]) for k in ("last", "min", "max", "count", "last_step")}
                summaries.setdefault((r["project"], r["run_id"]), {})[r["metric"]] = slot
            for r in runs:
                r["metrics"] = summaries.get((r["project"], r["id"]), {})
        return runs


router = APIRouter()


def _parse_target(body: Any) -> Target | None:
    if isinstance(body, dict) and len(body) == 1:
        ((kind, value),) = body.items()
        if kind in ("run", "experiment") and isinstance(value, str) and 0 < len(value) <= 255:
            return (kind, value)
    return None


@router.websocket("/ws")
async def websocket_endpoint(ws: WebSocket) -> None:
    app = ws.app
    hub: LiveHub = app.state.hub
    auth = getattr(app.state, "auth", None)
    project: str | None = None
    if auth is not None and auth.enabled:
        key = ws.query_params.get("api_key") or ws.headers.get("x-api-key")
        project = auth.project_for(key)
        if project is None:
            await ws.close(code=4401, reason="a valid API key is required")
            return
    await ws.accept()
    sub = Subscriber(ws, project, hub)
    hub.subscribers.add(sub)
    pump = asyncio.create_task(sub.pump())
    try:
        while True:
            raw = await ws.receive_text()
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError:
                sub.send_control({"type": "error", "message": "messages must be JSON"})
                continue
            if not isinstance(message, dict):
                sub.send_control({"type": "error", "message": "messages must be JSON objects"})
                continue
            if "subscribe" in message:
                target = _parse_target(message["subscribe"])
                if target is None:
                    sub.send_control({"type": "error", "message": 'subscribe takes {"run": "<id>"} or {"experiment": "<name>"}'})
                    continue
                # Register first, so nothing published while the snapshot is read is lost; what
                # arrives meanwhile is held until the snapshot is queued, then follows it.
                sub.catching_up += 1
                try:
                    hub.subscribe(sub, target)
                    runs = await hub.store.call(hub.snapshot, target, project)
                    sub.send_control({"type": "subscribed", "target": {target[0]: target[1]}})
                    sub.send_control({"type": "snapshot", "target": {target[0]: target[1]}, "runs": runs, "server_time": time.time()})
                finally:
                    sub.catching_up -= 1
                    sub.wake.set()
            elif "unsubscribe" in message:
                target = _parse_target(message["unsubscribe"])
                if target is None:
                    sub.send_control({"type": "error", "message": 'unsubscribe takes {"run": "<id>"} or {"experiment": "<name>"}'})
                    continue
                hub.unsubscribe(sub, target)
                for run in [r for r, u in sub.pending.items() if u.get("run") == target[1] or u.get("experiment") == target[1]]:
                    sub.pending.pop(run, None)
                    sub.encoded.pop(run, None)
                if target[0] == "experiment":
                    sub.frames = deque(f for f in sub.frames if f[0] != target[1])
                sub.send_control({"type": "unsubscribed", "target": {target[0]: target[1]}})
            elif message.get("ping") is not None:
                sub.send_control({"type": "pong", "server_time": time.time()})
            else:
                sub.send_control({"type": "error", "message": "unknown message; expected subscribe, unsubscribe or ping"})
    except WebSocketDisconnect:
        pass
    except Exception as exc:  # a broken socket must not take the hub down
        log.debug("websocket closed: %s", exc)
    finally:
        pump.cancel()
        hub.remove(sub)
