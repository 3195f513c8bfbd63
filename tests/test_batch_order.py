"""Unit tests (no services): metric_points rows are built in the table's sort order,
(project, metric, run_id, step), and hold exactly the rows of the events."""

from __future__ import annotations

import math
import random
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from runstream.events import ValidatedEvent
from runstream.processor import batch as batching
from runstream.processor.batch import Record, build
from runstream.storage.store import Store
from runstream.wire import validate

Row = tuple[str, str, str, int, str, str, int, str, int, int]


def _event(project: str, run: str, names: list[str], m: list[int], s: list[int], sv: list[tuple[int, str]], eid: str, t0: float) -> ValidatedEvent:
    """A validated metrics event, built directly (runstream.wire.validate makes the same)."""
    v = np.array([float(i) / 7 for i in range(len(m))])
    for i, _ in sv:
        v[i] = math.nan
    fields = {"v": 1, "kind": "metrics", "id": eid, "project": project, "run": run, "ts": t0, "names": names}
    m_col, s_col = np.array(m, dtype=np.int64), np.array(s, dtype=np.int64)
    return ValidatedEvent(fields, "metrics", eid, run, project, t0, m_col, s_col, v, t0 + np.arange(len(m), dtype=np.float64) * 0.001, sv)


def _expected_rows(recs: list[Record]) -> list[Row]:
    """Every point of every record, computed from the events alone (arrival order)."""
    rows: list[Row] = []
    for r in recs:
        ev = r.event
        strings = dict(ev.sv)
        for i, (mi, step, value, t) in enumerate(zip(ev.m.tolist(), ev.s.tolist(), ev.v.tolist(), ev.t.tolist())):
            rows.append(
                (ev.project, ev.run, ev.fields["names"][mi], step, repr(value), strings.get(i, ""), round(t * 1000.0), r.topic, r.partition, r.offset)
            )
    return rows


def _table_rows(table: pa.Table) -> list[Row]:
    c = {name: table[name].to_pylist() for name in table.column_names}
    c["ts"] = table["ts"].cast(pa.int64()).to_pylist()
    names = ("project", "run_id", "metric", "step", "value", "value_str", "ts", "kafka_topic", "kafka_partition", "kafka_offset")
    return [tuple(repr(x) if name == "value" else x for name, x in zip(names, row)) for row in zip(*(c[name] for name in names))]


def _metric_points(recs: list[Record]) -> pa.Table:
    batch = build(recs, {})
    assert batch.points == sum(len(r.event.m) for r in recs)
    return batch.tables["metric_points"]


def _check(recs: list[Record], by_step: bool = True) -> list[Row]:
    """The rows are those of the events, in (project, metric, run_id, step) order,
    or (by_step=False) in (project, metric, run_id) order and arrival order inside."""
    table = _metric_points(recs)
    rows, expected = _table_rows(table), _expected_rows(recs)
    arrival = {row: i for i, row in enumerate(expected)}
    keys = [(row[0], row[2], row[1], row[3] if by_step else arrival[row]) for row in rows]
    assert keys == sorted(keys), "rows are not in (project, metric, run_id, step) order"
    assert sorted(rows) == sorted(expected), "the sorted build holds different rows"
    for name in ("project", "run_id", "metric"):
        values = table[name].combine_chunks().dictionary.to_pylist()
        assert values == sorted(values), f"{name} dictionary is not in string order"
    for name in ("project", "run_id", "metric", "value_str", "kafka_topic"):
        values = table[name].combine_chunks().dictionary.to_pylist()
        assert len(set(values)) == len(values), f"{name} dictionary holds a value twice (ClickHouse refuses it)"
    # Rows with the same key keep their arrival order (the value column numbers them per event).
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        by_key.setdefault(row[:4], []).append(arrival[row])
    assert all(ix == sorted(ix) for ix in by_key.values())
    return rows


PROJECTS = ["vision", "Vision", "ünïcode", "プロジェクト", "a", "ab"]
METRICS = ["loss", "Loss", "lösung", "损失", "acc/top1", "acc", "z", "émoji🔥", "lr"]


@pytest.fixture
def resort_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-sort by step however many rows go backwards (small batches exceed the default share)."""
    monkeypatch.setattr(batching, "MAX_RESORTED_FRACTION", 1.0)


def _in_order(project: str, run: str, n: int, k: int) -> Record:
    return Record(
        "metrics",
        0,
        10_000 + k,
        _event(project, run, ["loss", "acc"], [i % 2 for i in range(n)], [1000 * k + i // 2 for i in range(n)], [], f"b:{k}", 1e9),
    )


@pytest.mark.usefixtures("resort_all")
def test_interleaved_runs_projects_and_metrics_come_out_sorted_with_every_row() -> None:
    rng = random.Random(11)
    runs = [(p, f"run-{rng.randrange(10**6):06d}") for p in PROJECTS for _ in range(3)]
    runs += [("vision", "ŕun-ñ"), ("Vision", "ŕun-ñ"), ("a", "run-000001"), ("ab", "run-000001")]  # one run id in two projects
    next_step = {run: 0 for run in runs}
    recs: list[Record] = []
    for k in range(120):
        project, run = rng.choice(runs)
        names = rng.sample(METRICS, rng.randint(1, 5))
        n = rng.randint(1, 40)
        m = [rng.randrange(len(names)) for _ in range(n)]
        base = next_step[(project, run)]
        s = sorted(base + rng.randrange(20) for _ in range(n))
        if k % 9 == 0:  # a user logging steps out of order
            rng.shuffle(s)
        next_step[(project, run)] = base + 20
        sv = [(i, rng.choice(["warmup", "ñ", "", "done ✓"])) for i in range(n) if rng.random() < 0.15]
        ev = _event(project, run, names, m, s, sv, f"w:{k}", 1_700_000_000.0 + k)
        recs.append(Record(topic=rng.choice(["metrics", "metrics-b"]), partition=rng.randrange(4), offset=1000 + k, event=ev))
    rows = _check(recs)
    assert any(row[5] for row in rows) and len({row[0] for row in rows}) == len(PROJECTS)


@pytest.mark.usefixtures("resort_all")
def test_a_run_logging_backwards_is_sorted_by_step_and_in_order_runs_stay_as_they_came() -> None:
    recs = [
        Record("metrics", 0, 1, _event("p", "r2", ["loss"], [0, 0, 0], [5, 3, 4], [(1, "x")], "w:1", 1e9)),
        Record("metrics", 0, 2, _event("p", "r1", ["loss", "acc"], [0, 1, 0, 1], [0, 0, 1, 1], [], "w:2", 1e9)),
        Record("metrics", 1, 3, _event("p", "r2", ["loss"], [0, 0], [2, 6], [], "w:3", 1e9)),
        Record("metrics", 0, 4, _event("p", "r1", ["acc", "loss"], [0, 1], [2, 2], [], "w:4", 1e9)),
    ]
    rows = _check(recs)
    assert [(row[1], row[2], row[3]) for row in rows] == [
        ("r1", "acc", 0),
        ("r1", "acc", 1),
        ("r1", "acc", 2),
        ("r1", "loss", 0),
        ("r1", "loss", 1),
        ("r1", "loss", 2),
        ("r2", "loss", 2),
        ("r2", "loss", 3),
        ("r2", "loss", 4),
        ("r2", "loss", 5),
        ("r2", "loss", 6),
    ]
    assert [row[5] for row in rows if row[1] == "r2"] == ["", "x", "", "", ""]


@pytest.mark.usefixtures("resort_all")
def test_already_sorted_rows_and_a_single_group_out_of_order() -> None:
    _check([Record("metrics", 0, 7, _event("p", "r", ["a", "b"], [0, 0, 1, 1], [1, 2, 1, 2], [(3, "s")], "w:1", 1e9))])
    _check([Record("metrics", 0, 7, _event("p", "r", ["a"], [0, 0, 0, 0], [3, 1, 2, 1], [(0, "s")], "w:1", 1e9))])


def test_more_groups_than_a_uint16_key_holds() -> None:
    rng = random.Random(3)
    names = [f"m{i:03d}" for i in range(300)]
    recs = []
    for k in range(240):  # 240 runs x 300 metrics = 72,000 groups
        m = list(range(300))
        rng.shuffle(m)
        ev = _event("p", f"run{rng.randrange(10**9)}-{k}", names, m, [rng.randrange(3) for _ in m], [], f"w:{k}", 1e9)
        recs.append(Record("metrics", k % 3, k, ev))
    _check(recs)


def test_few_rows_going_backwards_are_re_sorted_by_default() -> None:
    recs = [_in_order("p", f"run{k % 5}", 200, k) for k in range(10)]
    recs.insert(4, Record("metrics", 1, 5, _event("p", "run3", ["loss"], [0, 0, 0], [9, 1, 5], [(2, "s")], "w:1", 1e9)))
    _check(recs)


def test_many_rows_going_backwards_stay_in_arrival_order_inside_their_group() -> None:
    rng = random.Random(5)
    recs = [_in_order("p", f"run{k % 3}", 50, k) for k in range(6)]
    for k in range(6):
        s = list(range(100))
        rng.shuffle(s)
        recs.append(Record("metrics", 2, k, _event("p", f"run{k % 3}", ["loss", "acc"], [i % 2 for i in range(100)], s, [], f"w:{k}", 1e9)))
    assert sum(len(r.event.m) for r in recs[6:]) > batching.MAX_RESORTED_FRACTION * sum(len(r.event.m) for r in recs)
    _check(recs, by_step=False)


def test_summary_rows_merge_to_what_the_engine_computes_from_the_points(store: Store) -> None:
    """The processor's partial summary rows (processor/batch.py), merged by the engine, equal
    the summaries computed in SQL from the stored points: across batches, partitions, steps
    out of order and repeated, strings and non-finite values."""
    from runstream.api.queries import SUMMARY_SELECT

    rng = np.random.default_rng(11)
    topic = f"summaries-{uuid.uuid4().hex[:8]}"
    offset = 0
    batches = []
    for b in range(3):
        recs = []
        for r in range(4):
            partition = r % 2 if not (r == 3 and b == 2) else 5  # run 3 moves partition in the last batch
            n = int(rng.integers(1, 60))
            names = ["loss", "acc", "note"]
            m = rng.integers(0, 3, n).tolist()
            steps = (b * 100 + np.arange(n)).tolist()
            if r == 1:
                steps = rng.permutation(steps).tolist()  # out of order
            if r == 2 and n > 1:
                steps[1] = steps[0]  # a repeated step
            x: list[Any] = rng.normal(size=n).round(3).tolist()
            sv, nf = [], []
            for i in range(n):
                if m[i] == 2:
                    x[i] = None
                    sv.append([i, f"text-{i}"])
                elif rng.random() < 0.05:
                    x[i] = None
                    nf.append([i, "inf" if rng.random() < 0.5 else "nan"])
            ev = validate({"v": 1, "id": f"{topic}-{b}-{r}", "kind": "metrics", "run": f"run-{r}", "project": "p-" + topic, "ts": 1.7e9 + b,
                           "names": names, "m": m, "s": steps, "x": x, "sv": sv, "nf": nf})  # fmt: skip
            recs.append(Record(topic, partition, offset, ev))
            offset += 1
        batches.append(recs)
    for recs in batches:
        built = build(recs, {})
        store.insert_arrow("metric_points", built.tables["metric_points"])
        store.insert_arrow("metric_summaries", built.tables["metric_summaries"])
    where = "WHERE kafka_topic = {t:String} GROUP BY run_id, metric ORDER BY run_id, metric"
    ours = store.query_rows(f"SELECT run_id, metric, {SUMMARY_SELECT}, max(last_ts) FROM metric_summaries {where}", {"t": topic})
    reference = store.query_rows(
        "SELECT run_id, metric, count(), tupleElement(min((step, value)), 2), tupleElement(max((step, value)), 2),"
        " minIfOrNull(value, isFinite(value)), maxIfOrNull(value, isFinite(value)), sumIf(value, isFinite(value)) / countIf(isFinite(value)),"
        f" max(step), max(ts) FROM metric_points {where}",
        {"t": topic},
    )
    assert len(ours) == len(reference) == 12
    for got, want in zip(ours, reference):
        mean, want_mean = got[7], want[7]  # sums in another order: equal to rounding
        assert repr(got[:7] + got[8:]) == repr(want[:7] + want[8:])
        assert (math.isnan(mean) and math.isnan(want_mean)) or math.isclose(mean, want_mean, rel_tol=1e-12, abs_tol=1e-15)
    marks = "SELECT kafka_partition, max(kafka_offset) FROM {table} WHERE kafka_topic = {{t:String}} GROUP BY kafka_partition ORDER BY 1"
    assert store.query_rows(marks.format(table="metric_summaries"), {"t": topic}) == store.query_rows(
        marks.format(table="metric_points"), {"t": topic}
    )
