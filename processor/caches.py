"""The caches of the runs this processor has met: their run state and the event ids they have seen.

Preparation applies each event to its run's cached RunState and drops an event whose id
its run has seen (a re-sent event at a new offset). A run met for the first time is
loaded from storage, its row in `runs` and its ids in `ingested_events`, so the caches
start from what is stored; beyond MAX_RUN_CACHE runs the oldest are forgotten (and loaded
again if they come back). `clear` forgets every run, for when the caches may have moved
past what is stored (a batch prepared and then not written).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from runstream.processor.live import RunKey
from runstream.processor.retry import Retry
from runstream.processor.runstate import RunState
from runstream.processor.seen import SeenIds

MAX_RUN_CACHE = 100_000


class Reader(Protocol):
    def query_rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...

    def query_dicts(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


class RunCache:
    def __init__(self, store: Reader, retry: Retry, max_runs: int = MAX_RUN_CACHE) -> None:
        self.store = store
        self.retry = retry
        self.max_runs = max_runs
        # Keyed by (project, run id): a run id is unique only within its project.
        self.runs: OrderedDict[RunKey, RunState] = OrderedDict()
        self.seen: dict[RunKey, SeenIds] = {}

    def clear(self) -> None:
        self.runs.clear()
        self.seen.clear()

    def experiments(self, keys: set[RunKey]) -> dict[RunKey, str]:
        return {key: self.runs[key].experiment for key in keys if key in self.runs}

    async def load(self, keys: set[RunKey]) -> None:
        """Make sure every run of `keys` is cached, reading the missing ones from storage."""
        missing = [k for k in keys if k not in self.runs]
        if not missing:
            return
        ids = sorted({run for _, run in missing})
        projects = sorted({project for project, _ in missing})

        def load() -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
            params = {"ids": ids, "projects": projects}
            where = "WHERE run_id IN {ids:Array(String)} AND project IN {projects:Array(String)}"
            rows = self.store.query_dicts(f"SELECT * FROM runs FINAL {where}", params)
            seen = self.store.query_rows(f"SELECT project, run_id, event_id FROM ingested_events {where}", params)
            return rows, seen

        rows, seen = await self.retry(load, "load runs")
        by_key = {(r["project"], r["run_id"]): r for r in rows}
        for project, run in missing:
            row = by_key.get((project, run))
            if row is None:
                state = RunState(project=project, run_id=run)
            else:
                state = RunState(
                    project=row["project"],
                    run_id=run,
                    experiment=row["experiment"],
                    name=row["name"],
                    parent_id=row["parent_id"],
                    status=row["status"],
                    error=row["error"],
                    created_at=row["created_at"].timestamp(),
                    ended_at=row["ended_at"].timestamp() if row["ended_at"] else None,
                    last_seen=row["last_seen"].timestamp(),
                    tags=dict(row["tags"]),
                    params=dict(row["params"]),
                    descriptions=dict(row["descriptions"]),
                    meta=dict(row.get("meta") or {}),
                )
                state.persisted_last_seen = state.last_seen
            self.runs[(project, run)] = state
            self.seen.setdefault((project, run), SeenIds())
        wanted = set(missing)
        for project, run, event_id in seen:
            if (project, run) in wanted:
                self.seen[(project, run)].add(event_id)
        while len(self.runs) > self.max_runs:
            old, _ = self.runs.popitem(last=False)
            self.seen.pop(old, None)
