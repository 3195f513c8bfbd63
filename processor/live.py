"""Compact live updates built from a written batch (pure).

One message per run per batch: the new points of each metric (all of them up
to LIVE_POINTS_PER_METRIC; beyond, `truncated` tells the dashboard to refetch and
the slot carries only the newest LIVE_TAIL_POINTS, with the count and the finite
min/max of all), status changes and new log lines. The api fans them out over
WebSockets.
"""

from __future__ import annotations

import time

import numpy as np

from runstream.events import ValidatedEvent
from runstream.live import LIVE_LOG_LINES, LIVE_POINTS_PER_METRIC, LIVE_TAIL_POINTS, LiveUpdate, MetricSlot, update_for
from runstream.processor.batch import MetricGroups, metric_groups

RunKey = tuple[str, str]  # (project, run id)

SMALL_BATCH = 2048  # points in a batch below which plain Python is faster than numpy
_INF = float("inf")


def _small_points(metrics: dict[str, MetricSlot], evs: list[ValidatedEvent]) -> None:
    # Plain Python beats numpy's per-call overhead on the few points of a live run's batch.
    for ev in evs:
        names = ev.fields["names"]
        for i, step, x in zip(ev.m.tolist(), ev.s.tolist(), ev.v.tolist()):
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


def _group_points(per_run: dict[RunKey, LiveUpdate], groups: MetricGroups) -> None:
    """Per (run, metric) the count, the finite min/max and the newest points, from the
    rows the batch wrote (sorted by group, then step): reductions over contiguous
    stretches, no sort; Python touches only the points that go out, once."""
    starts, sizes, value = groups.starts, groups.sizes, groups.value
    finite = np.isfinite(value)
    lo = np.minimum.reduceat(np.where(finite, value, _INF), starts)
    hi = np.maximum.reduceat(np.where(finite, value, -_INF), starts)
    # A slot carries all its points up to LIVE_POINTS_PER_METRIC; past that it is
    # truncated (the dashboard refetches the series) and carries only a short tail.
    keep = np.where(sizes > LIVE_POINTS_PER_METRIC, np.minimum(sizes, LIVE_TAIL_POINTS), sizes)
    first_kept = starts + sizes - keep
    picked = np.repeat(first_kept - (np.cumsum(keep) - keep), keep) + np.arange(int(keep.sum()))
    steps = groups.step[picked].tolist()
    values = value[picked].tolist()
    if not finite[picked].all():
        for i in np.flatnonzero(~finite[picked]).tolist():
            values[i] = None
    lo_l, hi_l, counts_l, keep_l = lo.tolist(), hi.tolist(), sizes.tolist(), keep.tolist()
    at = 0
    for code, (project, run, name) in enumerate(groups.keys):
        k = keep_l[code]
        slot: MetricSlot = {"s": steps[at : at + k], "v": values[at : at + k], "n": counts_l[code]}
        at += k
        if lo_l[code] != _INF:
            slot["min"], slot["max"] = lo_l[code], hi_l[code]
        per_run[(project, run)].setdefault("metrics", {})[name] = slot


def build_updates(
    events: list[ValidatedEvent], experiments: dict[RunKey, str], statuses: dict[RunKey, str], groups: MetricGroups | None = None
) -> list[LiveUpdate]:
    """`events` are this batch's newly written events; `statuses` the runs whose status
    changed; runs are keyed by (project, run id). `groups`: the metric rows the batch
    wrote (processor.batch), else they are grouped here."""
    per_run: dict[RunKey, LiveUpdate] = {}

    def entry(ev: ValidatedEvent) -> LiveUpdate:
        key = (ev.project, ev.run)
        item = per_run.get(key)
        if item is None:
            item = per_run[key] = update_for(ev.project, ev.run, experiments.get(key, ""))
        return item

    metric_events: dict[RunKey, list[ValidatedEvent]] = {}
    for ev in events:
        kind = ev.kind
        if kind == "metrics":
            entry(ev)
            metric_events.setdefault((ev.project, ev.run), []).append(ev)
        elif kind == "log":
            logs = entry(ev).setdefault("logs", [])
            logs.extend({"stream": ev.fields["stream"], "line": line, "ts": t} for line, t in zip(ev.fields["lines"], ev.t.tolist()))
        elif kind == "table":
            entry(ev).setdefault("tables", []).append(ev.fields["name"])
        elif kind == "file":
            entry(ev).setdefault("files", []).append({"path": ev.fields["path"], "file_kind": ev.fields.get("file_kind", "file")})
        elif kind in ("tags", "params", "run_start"):
            entry(ev)["meta"] = True
    points = groups.points if groups is not None else sum(len(ev.m) for evs in metric_events.values() for ev in evs)
    if points <= SMALL_BATCH:
        for run, evs in metric_events.items():
            _small_points(per_run[run].setdefault("metrics", {}), evs)
    elif metric_events:
        _group_points(per_run, groups if groups is not None else metric_groups([ev for evs in metric_events.values() for ev in evs]))
    for key, status in statuses.items():
        item = per_run.get(key) or update_for(key[0], key[1], experiments.get(key, ""))
        item["status"] = status
        per_run[key] = item
    now = time.time()
    for item in per_run.values():
        item["server_time"] = now
        for slot in item.get("metrics", {}).values():
            if len(slot["s"]) > LIVE_POINTS_PER_METRIC:
                slot["s"] = slot["s"][-LIVE_TAIL_POINTS:]
                slot["v"] = slot["v"][-LIVE_TAIL_POINTS:]
            if slot["n"] > len(slot["s"]):
                slot["truncated"] = True
        if "logs" in item and len(item["logs"]) > LIVE_LOG_LINES:
            item["logs"] = item["logs"][-LIVE_LOG_LINES:]
            item["logs_truncated"] = True
    return list(per_run.values())


def split_by_durability(updates: list[LiveUpdate]) -> tuple[list[LiveUpdate], list[LiveUpdate]]:
    """(updates to send once the batch's data tables are stored, updates to send once its
    ledger is). An update that changes a run row (a status, a start, tags or params) waits
    for the ledger lane, which writes the run rows: a subscriber registering in between would
    otherwise miss it and read the old row in its snapshot, and a run that has ended sends
    nothing more to correct it. Points and log lines are readable once the data tables are
    stored, so they go at once."""
    now: list[LiveUpdate] = []
    after_ledger: list[LiveUpdate] = []
    for update in updates:
        (after_ledger if "status" in update or update.get("meta") else now).append(update)
    return now, after_ledger
