"""Compact live updates built from a written batch (pure).

One message per run per batch: the new points of each metric (the newest
LIVE_POINTS_PER_METRIC of them; `truncated` tells the dashboard to refetch),
status changes and new log lines. The api fans them out over WebSockets.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

RunKey = tuple[str, str]  # (project, run id)

LIVE_POINTS_PER_METRIC = 200
LIVE_LOG_LINES = 200
SMALL_EVENT = 256
_INF = float("inf")


def _extend_range(slot: dict[str, Any], lo: float, hi: float) -> None:
    slot["min"] = lo if "min" not in slot else min(slot["min"], lo)
    slot["max"] = hi if "max" not in slot else max(slot["max"], hi)


def _small_points(metrics: dict[str, Any], evs: list[dict[str, Any]]) -> None:
    # Plain Python beats numpy's per-call overhead on the few points of a live run's batch.
    for ev in evs:
        names = ev["names"]
        for i, step, x in zip(ev["_m"].tolist(), ev["_s"].tolist(), ev["_v"].tolist()):
            slot = metrics.get(names[i])
            if slot is None:
                slot = metrics[names[i]] = {"s": [], "v": [], "n": 0}
            slot["s"].append(step)
            slot["v"].append(x if x == x and x not in (_INF, -_INF) else None)
            slot["n"] += 1


def _many_points(metrics: dict[str, Any], evs: list[dict[str, Any]]) -> None:
    """One vectorised pass over all of a run's points in the batch: per metric the
    count, the finite min/max and the newest LIVE_POINTS_PER_METRIC points."""
    codes: dict[str, int] = {}
    m_parts = []
    for ev in evs:
        local = np.array([codes.setdefault(name, len(codes)) for name in ev["names"]], dtype=np.int64)
        m_parts.append(local[ev["_m"]])
    m = np.concatenate(m_parts)
    s = np.concatenate([ev["_s"] for ev in evs])
    v = np.concatenate([ev["_v"] for ev in evs])
    order = np.argsort(m, kind="stable")  # stable: keeps arrival order within a metric
    bounds = np.searchsorted(m[order], np.arange(len(codes) + 1))
    for name, code in codes.items():
        picked = order[bounds[code] : bounds[code + 1]]
        if not picked.size:
            continue
        values = v[picked]
        slot = metrics.setdefault(name, {"s": [], "v": [], "n": 0})
        finite = values[np.isfinite(values)]
        if finite.size:
            _extend_range(slot, float(finite.min()), float(finite.max()))
        newest = picked[-LIVE_POINTS_PER_METRIC:]
        slot["s"].extend(s[newest].tolist())
        slot["v"].extend([x if x == x and x not in (_INF, -_INF) else None for x in v[newest].tolist()])
        slot["n"] += int(picked.size)


def build_updates(events: list[dict[str, Any]], experiments: dict[RunKey, str], statuses: dict[RunKey, str]) -> list[dict[str, Any]]:
    """`events` are this batch's newly written events; `statuses` the runs whose status
    changed; runs are keyed by (project, run id)."""
    per_run: dict[RunKey, dict[str, Any]] = {}

    def entry(ev: dict[str, Any]) -> dict[str, Any]:
        key = (ev["project"], ev["run"])
        item = per_run.get(key)
        if item is None:
            item = {"type": "update", "run": ev["run"], "project": ev["project"], "experiment": experiments.get(key, "")}
            per_run[key] = item
        return item

    metric_events: dict[RunKey, list[dict[str, Any]]] = {}
    for ev in events:
        kind = ev["kind"]
        if kind == "metrics":
            entry(ev)
            metric_events.setdefault((ev["project"], ev["run"]), []).append(ev)
        elif kind == "log":
            logs = entry(ev).setdefault("logs", [])
            logs.extend({"stream": ev["stream"], "line": line, "ts": t} for line, t in zip(ev["lines"], ev["_t"].tolist()))
        elif kind == "table":
            entry(ev).setdefault("tables", []).append(ev["name"])
        elif kind == "file":
            entry(ev).setdefault("files", []).append({"path": ev["path"], "file_kind": ev.get("file_kind", "file")})
        elif kind in ("tags", "params", "run_start"):
            entry(ev)["meta"] = True
    for run, evs in metric_events.items():
        metrics = per_run[run].setdefault("metrics", {})
        if sum(len(ev["_m"]) for ev in evs) <= SMALL_EVENT:
            _small_points(metrics, evs)
        else:
            _many_points(metrics, evs)
    for key, status in statuses.items():
        item = per_run.get(key) or {"type": "update", "run": key[1], "project": key[0], "experiment": experiments.get(key, "")}
        item["status"] = status
        per_run[key] = item
    now = time.time()
    for item in per_run.values():
        item["server_time"] = now
        for slot in item.get("metrics", {}).values():
            finite = [x for x in slot["v"] if x is not None and not isinstance(x, str)]
            if finite:
                _extend_range(slot, min(finite), max(finite))
            if len(slot["s"]) > LIVE_POINTS_PER_METRIC:
                slot["s"] = slot["s"][-LIVE_POINTS_PER_METRIC:]
                slot["v"] = slot["v"][-LIVE_POINTS_PER_METRIC:]
            if slot["n"] > len(slot["s"]):
                slot["truncated"] = True
        if "logs" in item and len(item["logs"]) > LIVE_LOG_LINES:
            item["logs"] = item["logs"][-LIVE_LOG_LINES:]
            item["logs_truncated"] = True
    return list(per_run.values())
