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
SMALL_BATCH = 2048  # points in a batch below which plain Python is faster than numpy
_INF = float("inf")


def _small_points(metrics: dict[str, Any], evs: list[dict[str, Any]]) -> None:
    # Plain Python beats numpy's per-call overhead on the few points of a live run's batch.
    for ev in evs:
        names = ev["names"]
        for i, step, x in zip(ev["_m"].tolist(), ev["_s"].tolist(), ev["_v"].tolist()):
            slot = metrics.get(names[i])
            if slot is None:
                slot = metrics[names[i]] = {"s": [], "v": [], "n": 0}
            slot["s"].append(step)
            if x == x and x not in (_INF, -_INF):
                slot["v"].append(x)
                if "min" not in slot:
                    slot["min"] = slot["max"] = x
                elif x < slot["min"]:
                    slot["min"] = x
                elif x > slot["max"]:
                    slot["max"] = x
            else:
                slot["v"].append(None)
            slot["n"] += 1


def _many_points(per_run: dict[RunKey, dict[str, Any]], metric_events: dict[RunKey, list[dict[str, Any]]]) -> None:
    """One vectorised pass over every point of the batch: per (run, metric) the count, the
    finite min/max and the newest LIVE_POINTS_PER_METRIC points. Python touches only the
    points that go out, once, and each group once."""
    codes: dict[tuple[int, str], int] = {}
    groups: list[tuple[RunKey, str]] = []
    g_parts, s_parts, v_parts = [], [], []
    for r, (key, evs) in enumerate(metric_events.items()):
        for ev in evs:
            local = []
            for name in ev["names"]:
                code = codes.get((r, name))
                if code is None:
                    code = codes[(r, name)] = len(groups)
                    groups.append((key, name))
                local.append(code)
            g_parts.append(np.asarray(local, dtype=np.int64)[ev["_m"]])
            s_parts.append(ev["_s"])
            v_parts.append(ev["_v"])
    g = np.concatenate(g_parts)
    s = np.concatenate(s_parts)
    v = np.concatenate(v_parts)
    order = np.argsort(g.astype(np.uint16) if len(groups) <= 65536 else g, kind="stable")  # arrival order within a group
    counts = np.bincount(g, minlength=len(groups))
    ends = np.cumsum(counts)
    starts = ends - counts
    # An event's names may include some none of its points use: those groups get no slot
    # (and reduceat must not see their empty ranges).
    present = np.flatnonzero(counts)
    finite = np.isfinite(v)
    lo = np.full(len(groups), _INF)
    hi = np.full(len(groups), -_INF)
    lo[present] = np.minimum.reduceat(np.where(finite, v, _INF)[order], starts[present])
    hi[present] = np.maximum.reduceat(np.where(finite, v, -_INF)[order], starts[present])
    keep = np.minimum(counts, LIVE_POINTS_PER_METRIC)
    # Positions (in group order) of each group's newest `keep` points.
    first_kept = ends - keep
    offsets_in_kept = np.arange(int(keep.sum())) - np.repeat(np.cumsum(keep) - keep, keep)
    picked = order[np.repeat(first_kept, keep) + offsets_in_kept]
    steps = s[picked].tolist()
    values = v[picked].tolist()
    if not finite[picked].all():
        for i in np.flatnonzero(~finite[picked]).tolist():
            values[i] = None
    lo_l, hi_l, counts_l, keep_l = lo.tolist(), hi.tolist(), counts.tolist(), keep.tolist()
    at = 0
    for code, (key, name) in enumerate(groups):
        k = keep_l[code]
        if not k:
            continue
        slot: dict[str, Any] = {"s": steps[at : at + k], "v": values[at : at + k], "n": counts_l[code]}
        at += k
        if lo_l[code] != _INF:
            slot["min"], slot["max"] = lo_l[code], hi_l[code]
        per_run[key].setdefault("metrics", {})[name] = slot


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
    if sum(len(ev["_m"]) for evs in metric_events.values() for ev in evs) <= SMALL_BATCH:
        for run, evs in metric_events.items():
            _small_points(per_run[run].setdefault("metrics", {}), evs)
    elif metric_events:
        _many_points(per_run, metric_events)
    for key, status in statuses.items():
        item = per_run.get(key) or {"type": "update", "run": key[1], "project": key[0], "experiment": experiments.get(key, "")}
        item["status"] = status
        per_run[key] = item
    now = time.time()
    for item in per_run.values():
        item["server_time"] = now
        for slot in item.get("metrics", {}).values():
            if len(slot["s"]) > LIVE_POINTS_PER_METRIC:
                slot["s"] = slot["s"][-LIVE_POINTS_PER_METRIC:]
                slot["v"] = slot["v"][-LIVE_POINTS_PER_METRIC:]
            if slot["n"] > len(slot["s"]):
                slot["truncated"] = True
        if "logs" in item and len(item["logs"]) > LIVE_LOG_LINES:
            item["logs"] = item["logs"][-LIVE_LOG_LINES:]
            item["logs_truncated"] = True
    return list(per_run.values())
