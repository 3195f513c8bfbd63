"""Turning a batch of validated events into columnar inserts (pure; no I/O).

A Kafka record is identified by (topic, partition, offset). Each table keeps,
per topic-partition, the highest offset it holds (its watermark): a record at
or below a table's watermark is already in that table and is skipped there.
Inserts of one batch are atomic per table, so after a crash at any point a
replay writes exactly the rows that are missing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

TopicPartition = tuple[str, int]
Watermarks = dict[str, dict[TopicPartition, int]]  # table -> (topic, partition) -> max offset


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    event: dict[str, Any]


@dataclass
class Batch:
    tables: dict[str, pa.Table] = field(default_factory=dict)
    points: int = 0
    events: int = 0
    skipped: int = 0
    # Highest offset per table and topic-partition that this batch writes.
    high: dict[str, dict[TopicPartition, int]] = field(default_factory=lambda: defaultdict(dict))


def _dict_array(values: list[str], indices: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32, copy=False)), pa.array(values, pa.string()))


class _Interner:
    def __init__(self) -> None:
        self.values: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        i = self.index.get(value)
        if i is None:
            i = len(self.values)
            self.index[value] = i
            self.values.append(value)
        return i


def _ms(seconds: np.ndarray) -> pa.Array:
    return pa.array(np.round(seconds * 1000.0).astype(np.int64), pa.timestamp("ms"))


def _kafka_columns(recs: list[Record], counts: list[int]) -> dict[str, pa.Array]:
    topics = _Interner()
    t_idx = np.array([topics(r.topic) for r in recs], dtype=np.int32)
    reps = np.array(counts, dtype=np.int64)
    return {
        "kafka_topic": _dict_array(topics.values, np.repeat(t_idx, reps)),
        "kafka_partition": pa.array(np.repeat(np.array([r.partition for r in recs], dtype=np.uint16), reps)),
        "kafka_offset": pa.array(np.repeat(np.array([r.offset for r in recs], dtype=np.uint64), reps)),
    }


def _ident_columns(recs: list[Record], counts: list[int]) -> dict[str, pa.Array]:
    projects, runs = _Interner(), _Interner()
    p_idx = np.array([projects(r.event["project"]) for r in recs], dtype=np.int32)
    r_idx = np.array([runs(r.event["run"]) for r in recs], dtype=np.int32)
    reps = np.array(counts, dtype=np.int64)
    return {
        "project": _dict_array(projects.values, np.repeat(p_idx, reps)),
        "run_id": _dict_array(runs.values, np.repeat(r_idx, reps)),
    }


def _metric_points(recs: list[Record]) -> pa.Table:
    metrics = _Interner()
    counts, m_parts, s_parts, v_parts, t_parts = [], [], [], [], []
    str_values = [""]
    str_index_parts = []
    offset = 0
    for r in recs:
        ev = r.event
        local = np.array([metrics(n) for n in ev["names"]], dtype=np.int32)
        m_parts.append(local[ev["_m"]])
        s_parts.append(ev["_s"])
        v_parts.append(ev["_v"])
        t_parts.append(ev["_t"])
        n = len(ev["_m"])
        counts.append(n)
        for i, text in ev["_sv"]:
            str_index_parts.append((offset + i, len(str_values)))
            str_values.append(text)
        offset += n
    str_idx = np.zeros(offset, dtype=np.int32)
    for pos, idx in str_index_parts:
        str_idx[pos] = idx
    cols = _ident_columns(recs, counts)
    cols.update(
        {
            "metric": _dict_array(metrics.values, np.concatenate(m_parts)),
            "step": pa.array(np.concatenate(s_parts)),
            "value": pa.array(np.concatenate(v_parts)),
            "value_str": _dict_array(str_values, str_idx),
            "ts": _ms(np.concatenate(t_parts)),
        }
    )
    cols.update(_kafka_columns(recs, counts))
    return pa.table(cols)


def _table_cells(recs: list[Record]) -> pa.Table:
    rows: dict[str, list[Any]] = defaultdict(list)
    counts = []
    for r in recs:
        ev = r.event
        n = 0
        for col, values in ev["columns"].items():
            for i, x in enumerate(values):
                rows["table_name"].append(ev["name"])
                rows["column"].append(col)
                rows["row"].append(ev.get("row0", 0) + i)
                if isinstance(x, str):
                    rows["value"].append(float("nan"))
                    rows["value_str"].append(x)
                else:
                    rows["value"].append(float("nan") if x is None else float(x))
                    rows["value_str"].append("")
                rows["ts"].append(ev["ts"])
                n += 1
        counts.append(n)
    cols = _ident_columns(recs, counts)
    cols.update(
        {
            "table_name": pa.array(rows["table_name"], pa.string()),
            "column": pa.array(rows["column"], pa.string()),
            "row": pa.array(rows["row"], pa.uint64()),
            "value": pa.array(rows["value"], pa.float64()),
            "value_str": pa.array(rows["value_str"], pa.string()),
            "ts": _ms(np.array(rows["ts"], dtype=np.float64)),
        }
    )
    cols.update(_kafka_columns(recs, counts))
    return pa.table(cols)


def _run_logs(recs: list[Record]) -> pa.Table:
    streams: list[str] = []
    lines: list[str] = []
    idxs: list[int] = []
    ts: list[np.ndarray] = []
    counts: list[int] = []
    for r in recs:
        ev = r.event
        n = len(ev["lines"])
        streams.extend([ev["stream"]] * n)
        lines.extend(ev["lines"])
        idxs.extend(range(n))
        ts.append(ev["_t"])
        counts.append(n)
    cols = _ident_columns(recs, counts)
    cols.update(
        {
            "stream": pa.array(streams, pa.string()),
            "ts": pa.array(np.round(np.concatenate(ts) * 1e6).astype(np.int64), pa.timestamp("us")),
            "idx": pa.array(idxs, pa.uint32()),
            "line": pa.array(lines, pa.string()),
        }
    )
    cols.update(_kafka_columns(recs, counts))
    return pa.table(cols)


def _run_files(recs: list[Record]) -> pa.Table:
    counts = [1] * len(recs)
    cols = _ident_columns(recs, counts)
    evs = [r.event for r in recs]
    cols.update(
        {
            "path": pa.array([e["path"] for e in evs], pa.string()),
            "file_kind": pa.array([e.get("file_kind", "file") for e in evs], pa.string()),
            "name": pa.array([e.get("name") or e["path"] for e in evs], pa.string()),
            "size": pa.array([e.get("size", 0) for e in evs], pa.uint64()),
            "content_type": pa.array([e.get("content_type") or "" for e in evs], pa.string()),
            "uri": pa.array([e.get("uri") or "" for e in evs], pa.string()),
            "sha256": pa.array([e.get("sha256") or "" for e in evs], pa.string()),
            "ts": _ms(np.array([float(e["ts"]) for e in evs])),
        }
    )
    cols.update(_kafka_columns(recs, counts))
    return pa.table(cols)


def _ingested_events(recs: list[Record]) -> pa.Table:
    counts = [1] * len(recs)
    cols = _ident_columns(recs, counts)
    evs = [r.event for r in recs]
    cols.update(
        {
            "event_id": pa.array([e["id"] for e in evs], pa.string()),
            "kind": pa.array([e["kind"] for e in evs], pa.string()),
            "points": pa.array([event_points(e) for e in evs], pa.uint32()),
            "ts": _ms(np.array([float(e["ts"]) for e in evs])),
        }
    )
    cols.update(_kafka_columns(recs, counts))
    return pa.table(cols)


def event_points(event: dict[str, Any]) -> int:
    kind = event["kind"]
    if kind == "metrics":
        return len(event["_m"])
    if kind == "table":
        return sum(len(v) for v in event["columns"].values())
    if kind == "log":
        return len(event["lines"])
    return 0


TABLE_OF_KIND = {"metrics": "metric_points", "table": "table_cells", "log": "run_logs", "file": "run_files"}
_BUILDERS = {
    "metric_points": _metric_points,
    "table_cells": _table_cells,
    "run_logs": _run_logs,
    "run_files": _run_files,
    "ingested_events": _ingested_events,
}


def _below(watermarks: Watermarks, table: str, rec: Record) -> bool:
    return rec.offset <= watermarks.get(table, {}).get((rec.topic, rec.partition), -1)


def build(records: list[Record], watermarks: Watermarks) -> Batch:
    """Columnar inserts for the records not yet stored, table by table."""
    batch = Batch()
    per_table: dict[str, list[Record]] = defaultdict(list)
    for rec in records:
        if _below(watermarks, "ingested_events", rec):
            batch.skipped += 1
            continue
        batch.events += 1
        table = TABLE_OF_KIND.get(rec.event["kind"])
        if table is not None and not _below(watermarks, table, rec):
            per_table[table].append(rec)
            if table == "metric_points":
                batch.points += len(rec.event["_m"])
        per_table["ingested_events"].append(rec)
    for table, recs in per_table.items():
        batch.tables[table] = _BUILDERS[table](recs)
        high = batch.high[table]
        for rec in recs:
            key = (rec.topic, rec.partition)
            if rec.offset > high.get(key, -1):
                high[key] = rec.offset
    return batch
