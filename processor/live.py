"""Compact live updates built from a written batch (pure).

One message per run per batch: the new points of each metric (the newest
LIVE_POINTS_PER_METRIC of them; `truncated` tells the dashboard to refetch),
status changes and new log lines. The api fans them out over WebSockets.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

LIVE_POINTS_PER_METRIC = 1000
LIVE_LOG_LINES = 200
SMALL_EVENT = 256
_INF = float("inf")


def _extend_range(slot: dict[str, Any], lo: float, hi: float) -> None:
    slot["min"] = lo if "min" not in slot else min(slot["min"], lo)
    slot["max"] = hi if "max" not in slot else max(slot["max"], hi)


def build_updates(events: list[dict[str, Any]], experiments: dict[str, str], statuses: dict[str, str]) -> list[dict[str, Any]]:
    """`events` are this batch's newly written events; `statuses` the runs whose status changed."""
    per_run: dict[str, dict[str, Any]] = {}

    def entry(ev: dict[str, Any]) -> dict[str, Any]:
        run = ev["run"]
        item = per_run.get(run)
        if item is None:
            item = {"type": "update", "run": run, "project": ev["project"], "experiment": experiments.get(run, "")}
            per_run[run] = item
        return item

    for ev in events:
        kind = ev["kind"]
        if kind == "metrics":
            metrics = entry(ev).setdefault("metrics", {})
            names = ev["names"]
            m, s, v = ev["_m"], ev["_s"], ev["_v"]
            if len(m) <= SMALL_EVENT:
                # Plain Python beats numpy's per-call overhead on the many small events of live runs.
                for i, step, x in zip(m.tolist(), s.tolist(), v.tolist()):
                    slot = metrics.get(names[i])
                    if slot is None:
                        slot = metrics[names[i]] = {"s": [], "v": [], "n": 0}
                    slot["s"].append(step)
                    slot["v"].append(x if x == x and x not in (_INF, -_INF) else None)
                    slot["n"] += 1
                continue
            for i, name in enumerate(names):
                mask = m == i
                count = int(mask.sum())
                if not count:
                    continue
                all_values = v[mask]
                steps = s[mask][-LIVE_POINTS_PER_METRIC:]
                values = all_values[-LIVE_POINTS_PER_METRIC:]
                slot = metrics.setdefault(name, {"s": [], "v": [], "n": 0})
                finite = all_values[np.isfinite(all_values)]
                if finite.size:
                    _extend_range(slot, float(finite.min()), float(finite.max()))
                slot["s"].extend(steps.tolist())
                slot["v"].extend([None if not np.isfinite(x) else x for x in values.tolist()])
                slot["n"] += count
        elif kind == "log":
            logs = entry(ev).setdefault("logs", [])
            logs.extend({"stream": ev["stream"], "line": line, "ts": t} for line, t in zip(ev["lines"], ev["_t"].tolist()))
        elif kind == "table":
            entry(ev).setdefault("tables", []).append(ev["name"])
        elif kind == "file":
            entry(ev).setdefault("files", []).append({"path": ev["path"], "file_kind": ev.get("file_kind", "file")})
        elif kind in ("tags", "params", "run_start"):
            entry(ev)["meta"] = True
    for run, status in statuses.items():
        item = per_run.get(run) or {"type": "update", "run": run, "project": "", "experiment": experiments.get(run, "")}
        item["status"] = status
        per_run[run] = item
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
                slot["truncated"] = True
        if "logs" in item and len(item["logs"]) > LIVE_LOG_LINES:
            item["logs"] = item["logs"][-LIVE_LOG_LINES:]
            item["logs_truncated"] = True
    return list(per_run.values())
