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

from runstream.events import ValidatedEvent

TopicPartition = tuple[str, int]
Watermarks = dict[str, dict[TopicPartition, int]]  # table -> (topic, partition) -> max offset


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    event: ValidatedEvent


@dataclass
class Batch:
    tables: dict[str, pa.Table] = field(default_factory=dict)
    points: int = 0
    events: int = 0
    skipped: int = 0
    # Highest offset per table and topic-partition that this batch writes.
    high: dict[str, dict[TopicPartition, int]] = field(default_factory=lambda: defaultdict(dict))
    metric_groups: MetricGroups | None = None  # the metric_points rows, for the live update


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
    """Kafka coordinates of each row when record i holds the next counts[i] rows."""
    return _kafka_columns_of_rows(recs, np.repeat(np.arange(len(recs), dtype=np.intp), np.array(counts, dtype=np.int64)))


def _kafka_columns_of_rows(recs: list[Record], rec_of_row: np.ndarray) -> dict[str, pa.Array]:
    """Kafka coordinates of each row, given the index of its record."""
    topics = _Interner()
    t_idx = np.array([topics(r.topic) for r in recs], dtype=np.int32)
    return {
        "kafka_topic": _dict_array(topics.values, t_idx[rec_of_row]),
        "kafka_partition": pa.array(np.array([r.partition for r in recs], dtype=np.uint16)[rec_of_row]),
        "kafka_offset": pa.array(np.array([r.offset for r in recs], dtype=np.uint64)[rec_of_row]),
    }


def _ident_columns(recs: list[Record], counts: list[int]) -> dict[str, pa.Array]:
    projects, runs = _Interner(), _Interner()
    p_idx = np.array([projects(r.event.project) for r in recs], dtype=np.int32)
    r_idx = np.array([runs(r.event.run) for r in recs], dtype=np.int32)
    reps = np.array(counts, dtype=np.int64)
    return {
        "project": _dict_array(projects.values, np.repeat(p_idx, reps)),
        "run_id": _dict_array(runs.values, np.repeat(r_idx, reps)),
    }


def _ranks(values: list[str]) -> tuple[list[str], np.ndarray]:
    """The values in string order, and the rank of each original code in it.

    ClickHouse compares strings as UTF-8 bytes, which orders them as Python does.
    """
    order = sorted(range(len(values)), key=values.__getitem__)
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values), dtype=np.int64)
    return [values[i] for i in order], rank


# The most rows a batch re-sorts by step for the groups whose steps go backwards. Past
# this ClickHouse sorts the block itself: measured on 1 M rows whose groups are in
# order, its sort costs ~0.08 s more than an insert of sorted rows, and a full
# lexsort here ~0.1 s more than the radix sort (on the processor's own loop).
MAX_RESORTED_FRACTION = 1 / 8


def _sort_rows(group: np.ndarray, step: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """A permutation ordering rows by (group, step) (None: they already are), and both keys in that order.

    A stable sort on the group key keeps arrival order inside a group: step order
    when a run logs its steps in order. The groups where it is not are sorted by
    step too, unless they hold more than MAX_RESORTED_FRACTION of the rows; then
    the rows go in group order only (ClickHouse sorts a block that is not sorted:
    the order is a saving, never a condition of correctness).
    """
    if bool((group[1:] >= group[:-1]).all()):
        order = None
    else:
        order = np.argsort(group, kind="stable")  # a radix sort for a uint16 key
        group, step = group[order], step[order]
    back = np.flatnonzero((step[1:] < step[:-1]) & (group[1:] == group[:-1]))
    if back.size:
        bad = np.unique(group[back])
        lo, hi = np.searchsorted(group, bad, "left"), np.searchsorted(group, bad, "right")
        sizes = hi - lo
        n = int(sizes.sum())
        if n <= group.size * MAX_RESORTED_FRACTION:
            rows = np.arange(n) + np.repeat(lo - (np.cumsum(sizes) - sizes), sizes)  # the bad groups' rows
            fixed = rows[np.lexsort((step[rows], group[rows]))]
            order = np.arange(group.size) if order is None else order
            order[rows] = order[fixed]
            step[rows] = step[fixed]
    return order, group, step


@dataclass
class MetricGroups:
    """A batch's metric rows in the table's sort order, by group (project, metric,
    run): what the live path needs without a second pass over the points."""

    keys: list[tuple[str, str, str]]  # (project, run id, metric) of each group
    starts: np.ndarray  # each group's first row
    sizes: np.ndarray
    step: np.ndarray
    value: np.ndarray

    @property
    def points(self) -> int:
        return int(self.step.size)


@dataclass
class _SortedRows:
    groups: MetricGroups
    codes: tuple[list[str], np.ndarray, list[str], np.ndarray, list[str], np.ndarray]  # project, run, metric: values, code per row
    seconds: np.ndarray
    strings: list[str]
    str_idx: np.ndarray
    rec_of_row: np.ndarray


def _sorted_rows(events: list[ValidatedEvent]) -> _SortedRows:
    """Rows in the table's sort order, (project, metric, run_id, step): a block
    that arrives sorted is not sorted again by ClickHouse. The dictionaries hold
    their values in string order, so comparing indices compares the strings; a
    row's group is the dense rank of its (project, metric, run)."""
    projects, runs, metrics = _Interner(), _Interner(), _Interner()
    p_codes, r_codes, name_codes, n_names, counts = [], [], [], [], []
    s_parts, v_parts, t_parts = [], [], []
    strings = _Interner()  # a dictionary's values must be distinct (ClickHouse refuses the insert otherwise)
    strings("")
    str_index_parts = []
    offset = 0
    for ev in events:
        p_codes.append(projects(ev.project))
        r_codes.append(runs(ev.run))
        names = ev.fields["names"]
        name_codes.extend([metrics(name) for name in names])
        n_names.append(len(names))
        s_parts.append(ev.s)
        v_parts.append(ev.v)
        t_parts.append(ev.t)
        n = len(ev.m)
        counts.append(n)
        for i, text in ev.sv:
            str_index_parts.append((offset + i, strings(text)))
        offset += n

    project_values, p_rank = _ranks(projects.values)
    run_values, r_rank = _ranks(runs.values)
    metric_values, m_rank = _ranks(metrics.values)
    n_runs, n_metrics = len(run_values), len(metric_values)
    project_metric = np.repeat(p_rank[p_codes], n_names) * n_metrics + m_rank[name_codes]
    keys, group_of_name = np.unique(project_metric * n_runs + np.repeat(r_rank[r_codes], n_names), return_inverse=True)
    group_of_name = group_of_name.astype(np.uint16 if len(keys) <= 1 << 16 else np.int64)
    g_parts = []
    first = 0
    for ev, k in zip(events, n_names):
        g_parts.append(group_of_name[first : first + k][ev.m])
        first += k

    order, group, step = _sort_rows(np.concatenate(g_parts), np.concatenate(s_parts))
    rec_of_row = np.repeat(np.arange(len(events), dtype=np.intp), np.array(counts, dtype=np.int64))
    value, seconds = np.concatenate(v_parts), np.concatenate(t_parts)
    str_idx = np.zeros(offset, dtype=np.int32)
    for pos, idx in str_index_parts:
        str_idx[pos] = idx
    if order is not None:
        rec_of_row, value, seconds = rec_of_row[order], value[order], seconds[order]
        if str_index_parts:
            str_idx = str_idx[order]
    # Sorted rows hold each group in one stretch: its identity columns are repeats.
    change = np.empty(group.size, dtype=bool)
    change[:1] = True
    np.not_equal(group[1:], group[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    sizes = np.diff(starts, append=group.size)
    present = keys[group[starts]]
    pairs = present // n_runs  # project * n_metrics + metric
    g_project, g_run, g_metric = (pairs // n_metrics).astype(np.int32), (present % n_runs).astype(np.int32), (pairs % n_metrics).astype(np.int32)
    group_keys = [(project_values[p], run_values[r], metric_values[m]) for p, r, m in zip(g_project.tolist(), g_run.tolist(), g_metric.tolist())]
    return _SortedRows(
        groups=MetricGroups(group_keys, starts, sizes, step, value),
        codes=(project_values, g_project, run_values, g_run, metric_values, g_metric),
        seconds=seconds,
        strings=strings.values,
        str_idx=str_idx,
        rec_of_row=rec_of_row,
    )


def metric_groups(events: list[ValidatedEvent]) -> MetricGroups:
    """The rows of these metrics events as the processor writes them, by group."""
    return _sorted_rows([ev for ev in events if ev.kind == "metrics" and len(ev.m)]).groups


def _metric_points(recs: list[Record], rows: _SortedRows) -> pa.Table:
    g = rows.groups
    project_values, g_project, run_values, g_run, metric_values, g_metric = rows.codes
    cols = {
        "project": _dict_array(project_values, np.repeat(g_project, g.sizes)),
        "run_id": _dict_array(run_values, np.repeat(g_run, g.sizes)),
        "metric": _dict_array(metric_values, np.repeat(g_metric, g.sizes)),
        "step": pa.array(g.step),
        "value": pa.array(g.value),
        "value_str": _dict_array(rows.strings, rows.str_idx),
        "ts": _ms(rows.seconds),
    }
    cols.update(_kafka_columns_of_rows(recs, rows.rec_of_row))
    return pa.table(cols)


_TUPLE = pa.struct([("f0", pa.int64()), ("f1", pa.float64())])  # ClickHouse Tuple(Int64, Float64): (step, value)


def _metric_summaries(recs: list[Record], rows: _SortedRows) -> pa.Table:
    """One partial summary row per (project, run, metric, topic, partition) of these records
    (the engine merges the rows of a key): count, (step, value) at the lowest and highest
    step, finite min, max, sum and count, last step and time, and the highest offset."""
    g = rows.groups
    tp_codes: dict[tuple[str, int], int] = {}
    tp_of_rec = np.array([tp_codes.setdefault((r.topic, r.partition), len(tp_codes)) for r in recs], dtype=np.int64)
    n_tp = len(tp_codes)
    topics = _Interner()
    tp_topic = np.array([topics(topic) for topic, _ in tp_codes], dtype=np.int32)
    tp_partition = np.array([partition for _, partition in tp_codes], dtype=np.uint16)
    offset_of_rec = np.array([r.offset for r in recs], dtype=np.uint64)
    tp = tp_of_rec[rows.rec_of_row]
    step, value, seconds, rec = g.step, g.value, rows.seconds, rows.rec_of_row
    group = np.repeat(np.arange(len(g.starts)), g.sizes)
    if n_tp > 1 and not bool((tp == np.repeat(tp[g.starts], g.sizes)).all()):
        # A run's records are in one partition unless the partition count changed: split
        # such groups by partition (a stable sort keeps each one's rows in step order).
        order = np.argsort(group * n_tp + tp, kind="stable")
        group, tp, step, value, seconds, rec = group[order], tp[order], step[order], value[order], seconds[order], rec[order]
    key = group * n_tp + tp
    change = np.empty(key.size, dtype=bool)
    change[:1] = True
    np.not_equal(key[1:], key[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], key.size) - 1
    if bool(((step[1:] > step[:-1]) | change[1:]).all()):
        first, last = starts, ends
    else:
        # Steps went backwards or repeat within a segment: order it by (step, value), as the
        # engine compares the (step, value) tuples when it merges rows.
        by_step = np.lexsort((value, step, key))
        first, last = by_step[starts], by_step[ends]
    finite = np.isfinite(value)
    finite_count = np.add.reduceat(finite.astype(np.uint64), starts)
    lo = np.minimum.reduceat(np.where(finite, value, np.inf), starts)
    hi = np.maximum.reduceat(np.where(finite, value, -np.inf), starts)
    none = finite_count == 0
    project_values, g_project, run_values, g_run, metric_values, g_metric = rows.codes
    seg_group, seg_tp = group[starts], tp[starts]
    return pa.table(
        {
            "project": _dict_array(project_values, g_project[seg_group]),
            "run_id": _dict_array(run_values, g_run[seg_group]),
            "metric": _dict_array(metric_values, g_metric[seg_group]),
            "kafka_topic": _dict_array(topics.values, tp_topic[seg_tp]),
            "kafka_partition": pa.array(tp_partition[seg_tp]),
            "count_state": pa.array(np.diff(np.append(starts, key.size)).astype(np.uint64)),
            "first_state": pa.StructArray.from_arrays([pa.array(step[first]), pa.array(value[first])], fields=list(_TUPLE)),
            "last_state": pa.StructArray.from_arrays([pa.array(step[last]), pa.array(value[last])], fields=list(_TUPLE)),
            "min_state": pa.array(lo, mask=none),
            "max_state": pa.array(hi, mask=none),
            "sum_state": pa.array(np.add.reduceat(np.where(finite, value, 0.0), starts)),
            "finite_state": pa.array(finite_count),
            "last_step": pa.array(np.maximum.reduceat(step, starts)),
            "last_ts": _ms(np.maximum.reduceat(seconds, starts)),
            "kafka_offset": pa.array(np.maximum.reduceat(offset_of_rec[rec], starts)),
        }
    )


def _table_cells(recs: list[Record]) -> pa.Table:
    rows: dict[str, list[Any]] = defaultdict(list)
    counts = []
    for r in recs:
        ev = r.event.fields
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
        ev = r.event.fields
        n = len(ev["lines"])
        streams.extend([ev["stream"]] * n)
        lines.extend(ev["lines"])
        idxs.extend(range(n))
        ts.append(r.event.t)
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
    evs = [r.event.fields for r in recs]
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
            "event_id": pa.array([e.id for e in evs], pa.string()),
            "kind": pa.array([e.kind for e in evs], pa.string()),
            "points": pa.array([event_points(e) for e in evs], pa.uint32()),
            "ts": _ms(np.array([e.ts for e in evs])),
        }
    )
    cols.update(_kafka_columns(recs, counts))
    return pa.table(cols)


def event_points(event: ValidatedEvent) -> int:
    kind = event.kind
    if kind == "metrics":
        return len(event.m)
    if kind == "table":
        return sum(len(v) for v in event.fields["columns"].values())
    if kind == "log":
        return len(event.fields["lines"])
    return 0


TABLE_OF_KIND = {"metrics": "metric_points", "table": "table_cells", "log": "run_logs", "file": "run_files"}
_BUILDERS = {
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
    same_points = True
    for rec in records:
        if _below(watermarks, "ingested_events", rec):
            batch.skipped += 1
            continue
        batch.events += 1
        table = TABLE_OF_KIND.get(rec.event.kind)
        if table is not None and not _below(watermarks, table, rec):
            per_table[table].append(rec)
            if table == "metric_points":
                batch.points += len(rec.event.m)
        if table == "metric_points":
            summarised = not _below(watermarks, "metric_summaries", rec)
            if summarised:
                per_table["metric_summaries"].append(rec)
            if summarised == _below(watermarks, "metric_points", rec):
                same_points = False  # after a partial write: the two tables take different records
        per_table["ingested_events"].append(rec)
    sorted_points = None
    for table, recs in sorted(per_table.items(), key=lambda item: item[0] == "metric_summaries"):
        if table == "metric_points":
            sorted_points = _sorted_rows([r.event for r in recs])
            batch.tables[table] = _metric_points(recs, sorted_points)
            batch.metric_groups = sorted_points.groups
        elif table == "metric_summaries":
            # The same records as metric_points but after a partial write (then sorted anew).
            rows = sorted_points if same_points and sorted_points is not None else _sorted_rows([r.event for r in recs])
            batch.tables[table] = _metric_summaries(recs, rows)
        else:
            batch.tables[table] = _BUILDERS[table](recs)
        high = batch.high[table]
        for rec in recs:
            key = (rec.topic, rec.partition)
            if rec.offset > high.get(key, -1):
                high[key] = rec.offset
    return batch
