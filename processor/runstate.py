"""Run state: the lifecycle, tags, params and descriptions of one run.

Events of one run arrive in order on one partition, so the owner of that
partition applies them to a cached RunState and writes the full row to the
`runs` ReplacingMergeTree. Applying an event twice gives the same state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runstream.lifecycle import last_seen_resolution_s
from runstream.wire import TERMINAL_STATUSES

# Persist a row for last_seen alone only this often (at most 30 s; a quarter of the crash
# threshold, runstream.lifecycle, so a live run is never shown Crashed between two rows);
# status changes are written at once.
LAST_SEEN_RESOLUTION_S = 30.0


@dataclass
class RunState:
    project: str
    run_id: str
    experiment: str = "Default"
    name: str = ""
    parent_id: str = ""
    status: str = "Running"
    error: str = ""
    created_at: float = 0.0
    ended_at: float | None = None
    last_seen: float = 0.0
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    persisted_last_seen: float = 0.0
    dirty: bool = False

    def row(self, version: int) -> list[Any]:
        """The runs row, in storage.schema.RUN_COLUMNS order."""
        return [
            self.project,
            self.run_id,
            self.experiment,
            self.name,
            self.parent_id,
            self.status,
            self.error,
            _dt(self.created_at),
            None if self.ended_at is None else _dt(self.ended_at),
            _dt(self.last_seen),
            # Copies: the next batch is prepared (and may set or remove tags) while this
            # row waits for the ledger lane's insert (processor.consumer).
            dict(self.tags),
            dict(self.params),
            dict(self.descriptions),
            dict(self.meta),
            version,
        ]


def apply_tags(tags: dict[str, str], changes: dict[str, str | None]) -> None:
    """A `tags` event's changes, in order: a value sets its tag, null removes it (docs/events.md)."""
    for key, value in changes.items():
        if value is None:
            tags.pop(key, None)
        else:
            tags[key] = value


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def apply(state: RunState, event: dict[str, Any]) -> str | None:
    """Apply one validated event; return the new status if it changed."""
    kind = event["kind"]
    ts = float(event["ts"])
    before = state.status
    if not state.created_at:
        state.created_at = ts
        state.dirty = True
    if ts > state.last_seen:
        state.last_seen = ts
        if ts - state.persisted_last_seen >= last_seen_resolution_s():
            state.dirty = True
    if kind == "run_start":
        state.experiment = event["experiment"]
        state.name = event.get("name") or state.name
        state.parent_id = event.get("parent") or state.parent_id
        state.created_at = min(state.created_at, ts) if state.created_at else ts
        # A null tag value in a start is an absent tag: it neither sets nor removes one.
        state.tags.update({k: v for k, v in event.get("tags", {}).items() if v is not None})
        state.params.update(event.get("params", {}))
        state.meta.update(event.get("meta") or {})
        if state.status not in TERMINAL_STATUSES:
            state.status = event["status"]
        state.dirty = True
    elif kind in ("run_status", "run_end"):
        # A second report of the same end without an error keeps the first one's: a
        # submitted script records its traceback, then its supervisor reports the same
        # status from the exit code (ingest/compute.py).
        error = event.get("error") or ""
        if not error and state.status == event["status"] and kind == "run_end":
            error = state.error
        state.status = event["status"]
        state.error = error
        state.ended_at = ts if state.status in TERMINAL_STATUSES else None
        state.dirty = True
    elif kind == "tags":
        apply_tags(state.tags, event["tags"])
        state.dirty = True
    elif kind == "params":
        state.params.update(event["params"])
        state.dirty = True
    elif kind in ("metrics", "table") and event.get("desc"):
        desc = event["desc"] if kind == "metrics" else {event["name"]: event["desc"]}
        if isinstance(desc, dict) and any(state.descriptions.get(k) != v for k, v in desc.items()):
            state.descriptions.update({k: str(v) for k, v in desc.items()})
            state.dirty = True
    return state.status if state.status != before else None
