"""Preparing a polled batch: from Kafka records to the inserts of every table.

Decode and validate each record (a refused one goes with its reason to the dead letters),
skip what is stored already (a record at or below the ingested-events watermark; an event
whose id its run has seen, re-sent at a new offset), build the tables' inserts
(batch.build), apply the events to the cached run state, and note the offsets to commit.
The caches move forward here, before the write: the write is retried until it succeeds
or the processor stops, and the next batch is prepared while it runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from runstream.events import ValidatedEvent
from runstream.processor import batch as batching
from runstream.processor.caches import RunCache
from runstream.processor.live import RunKey
from runstream.processor.runstate import apply
from runstream.processor.seen import SeenIds
from runstream.processor.stats import ProcessorStats
from runstream.processor.watermarks import Watermarks
from runstream.wire import WireError, decode, validate


@dataclass
class Prepared:
    built: batching.Batch
    run_rows: list[Any]
    events: list[ValidatedEvent]
    status_changes: dict[RunKey, str]
    dead: list[tuple[Any, str]]  # (record, reason) for the dead-letter topic
    commit: dict[TopicPartition, int]


class Preparer:
    def __init__(self, watermarks: Watermarks, runs: RunCache, stats: ProcessorStats) -> None:
        self.watermarks = watermarks
        self.runs = runs
        self.stats = stats

    async def prepare(self, data: dict[TopicPartition, list[Any]]) -> Prepared:
        t0 = time.perf_counter()
        records: list[batching.Record] = []
        dead: list[tuple[Any, str]] = []
        commit: dict[TopicPartition, int] = {}
        for tp, messages in data.items():
            if not messages:
                continue
            commit[tp] = max(m.offset for m in messages) + 1
            done = self.watermarks.stored(tp.topic, tp.partition)
            for msg in messages:
                self.stats.events_in += 1
                if msg.offset <= done:
                    self.stats.events_skipped += 1
                    continue
                try:
                    event = validate(decode(msg.value))
                except WireError as exc:
                    dead.append((msg, str(exc)))
                    continue
                except Exception as exc:  # a decoder bug must not stop the pipeline either
                    dead.append((msg, f"internal decode error: {exc!r}"))
                    continue
                records.append(batching.Record(tp.topic, tp.partition, msg.offset, event))

        t1 = time.perf_counter()
        await self.runs.load({(r.event.project, r.event.run) for r in records})
        runs, seen_ids = self.runs.runs, self.runs.seen
        fresh: list[batching.Record] = []
        batch_ids: set[str] = set()
        for rec in records:
            eid = rec.event.id
            seen = seen_ids.get((rec.event.project, rec.event.run))
            if eid in batch_ids or (seen is not None and eid in seen):
                self.stats.events_skipped += 1
                continue
            batch_ids.add(eid)
            fresh.append(rec)

        built = batching.build(fresh, self.watermarks.tables)
        status_changes: dict[RunKey, str] = {}
        for rec in fresh:
            ev = rec.event.fields
            key = (ev["project"], ev["run"])
            changed = apply(runs[key], ev)
            if changed:
                status_changes[key] = changed
        now_version = time.time_ns()
        dirty = [st for st in runs.values() if st.dirty]
        run_rows = [st.row(now_version) for st in dirty]
        for st in dirty:
            st.dirty = False
            st.persisted_last_seen = st.last_seen
        for rec in fresh:
            seen_ids.setdefault((rec.event.project, rec.event.run), SeenIds()).add(rec.event.id)
        t2 = time.perf_counter()
        self.stats.seconds["decode"] += t1 - t0
        self.stats.seconds["prepare"] += t2 - t1
        return Prepared(built, run_rows, [r.event for r in fresh], status_changes, dead, commit)
