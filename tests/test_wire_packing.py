"""Unit tests (no services): packed metric columns, the client's log_metrics fast
path against its general path, and live updates built from many points."""

from __future__ import annotations

import base64
import math
import time
from typing import Any

import numpy as np
import pytest

from runstream.config import Settings
from runstream.events import ValidatedEvent
from runstream.ingest.run import Experiment, Run
from runstream.ingest.values import InvalidInput
from runstream.live import LIVE_POINTS_PER_METRIC, LIVE_TAIL_POINTS
from runstream.processor.live import build_updates
from runstream.wire import WireError, pack, validate
from tests.conftest import NullShipper

# The subject is not storage: the embedded engine is enough (tests/conftest.py).
pytestmark = pytest.mark.one_engine


def _metrics_event(**columns: Any) -> dict[str, Any]:
    event = {"v": 1, "id": "w:1", "kind": "metrics", "run": "r1", "project": "p", "ts": 1_700_000_000.0, "names": ["loss", "acc"]}
    event.update(columns)
    return event


def test_packed_columns_decode_to_the_same_arrays_as_json_arrays() -> None:
    m, s, x, t = [0, 1, 0, 1], [0, 0, 1, 1], [0.5, 0.9, 0.25, 0.95], [1_700_000_000.0 + i for i in range(4)]
    plain = validate(_metrics_event(m=m, s=s, x=x, t=t))
    packed = validate(_metrics_event(m=pack(m, "m"), s=pack(s, "s"), x=pack(x, "x"), t=pack(t, "t")))
    for key in ("m", "s", "v", "t"):
        assert np.array_equal(getattr(plain, key), getattr(packed, key)), key
    assert packed.s.dtype == np.int64 and packed.v.dtype == np.float64


def test_packed_values_take_nonfinite_and_string_values_through_nf_and_sv() -> None:
    x = pack([1.0, None, None], "x")  # None packs as NaN: "the value is given elsewhere"
    ev = validate(_metrics_event(names=["a"], m=pack([0, 0, 0], "m"), s=pack([0, 1, 2], "s"), x=x, nf=[[1, "-inf"]], sv=[[2, "warmup"]]))
    assert ev.v[0] == 1.0 and ev.v[1] == -math.inf and math.isnan(ev.v[2])
    assert ev.sv == [(2, "warmup")]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"m": "not base64!", "s": [0], "x": [1.0]}, "base64"),
        ({"m": base64.b64encode(b"\x00\x00\x00").decode(), "s": [0], "x": [1.0]}, "whole number"),
        ({"m": pack([0, 0], "m"), "s": pack([0], "s"), "x": [1.0, 2.0]}, "expected 2"),
        ({"m": pack([0], "m"), "s": [0], "x": pack([math.inf], "x")}, "non-finite"),
        ({"m": pack([0], "m"), "s": [0], "x": pack([math.nan], "x")}, "null where neither"),
        ({"m": pack([5], "m"), "s": [0], "x": [1.0]}, "outside 'names'"),
        ({"m": [0], "s": [0], "x": [1.0], "t": pack([-1.0], "t")}, "seconds since the epoch"),
        ({"m": [0], "s": [0], "x": [1.0], "t": pack([math.nan], "t")}, "seconds since the epoch"),
    ],
)
def test_bad_packed_columns_are_refused_with_a_reason(columns: dict[str, Any], message: str) -> None:
    with pytest.raises(WireError, match=message):
        validate(_metrics_event(**columns))


def _columns(run: Run) -> list[tuple[str, int, Any]]:
    return _columns_of([ev for ev, _ in run._buffer.take_events() if ev["kind"] == "metrics"])


def test_log_metrics_fast_path_buffers_exactly_what_the_general_path_does() -> None:
    exp = Experiment("unit", settings=Settings().with_(kafka="127.0.0.1:9"))
    fast, general = (Run(exp, shipper=NullShipper()) for _ in range(2))  # type: ignore[arg-type]
    steps = [{"loss": 1.0 / (i + 1), "acc": i / 10} for i in range(5)]
    for i, metrics in enumerate(steps):
        fast.log_metrics(metrics, step=i)  # dict + int step + finite floats: the fast path after the first call
        general._log_metrics_general(metrics, i, "")
    fast.log_metrics({"loss": math.nan, "acc": 0.5}, step=5)  # a NaN leaves the fast path
    general._log_metrics_general({"loss": math.nan, "acc": 0.5}, 5, "")
    fast.log("loss", 0.1)  # the next index after the last explicit step
    general.log("loss", 0.1)
    # The fast path buffers frames (sent after an event's per-point columns), so compare as sets of points.
    a, b = sorted(_columns(fast), key=lambda p: p[:2]), sorted(_columns(general), key=lambda p: p[:2])
    assert [(n, s) for n, s, _ in a] == [(n, s) for n, s, _ in b]
    assert np.allclose([x for *_, x in a], [x for *_, x in b], equal_nan=True)
    assert ("loss", 6, 0.1) in a


def test_rows_frames_decode_to_the_same_points_as_columns() -> None:
    t0 = 1_700_000_000.0
    rows = [{"m": [1, 0], "s": pack([3, 4], "s"), "t": pack([t0, t0 + 1], "t"), "x": pack([0.9, 0.5, 0.95, 0.25], "x")}]
    ev = validate(_metrics_event(m=[0], s=[2], x=[None], nf=[[0, "nan"]], rows=rows))
    got = list(zip(ev.m.tolist(), ev.s.tolist(), ev.v.tolist(), ev.t.tolist()))
    assert got[0][:2] == (0, 2) and math.isnan(got[0][2])
    assert got[1:] == [(1, 3, 0.9, t0), (0, 3, 0.5, t0), (1, 4, 0.95, t0 + 1), (0, 4, 0.25, t0 + 1)]
    only_rows = validate(_metrics_event(rows=[{"m": [0], "s": [7, 8], "x": [1.0, 2.0]}]))  # JSON arrays, t defaults to ts
    assert only_rows.s.tolist() == [7, 8] and only_rows.t.tolist() == [t0, t0]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "non-empty array of frames"),
        (["x"], "must be an object"),
        ([{"m": [], "s": [0], "x": []}], "at least one metric"),
        ([{"m": [2], "s": [0], "x": [1.0]}], "outside 'names'"),
        ([{"m": [0, 0], "s": [0], "x": [1.0, 2.0]}], "names a metric twice"),
        ([{"m": [0], "s": [], "x": []}], "at least one row"),
        ([{"m": [0, 1], "s": [0], "x": [1.0]}], "expected 2"),
        ([{"m": [0], "s": [0], "x": pack([math.nan], "x")}], "finite numbers"),
        ([{"m": [0], "s": [0], "x": [math.inf]}], "non-finite"),
        ([{"m": [0], "s": [0], "x": [1.0], "t": [-5.0]}], "seconds since the epoch"),
        ([{"m": [0], "s": pack(list(range(100_001)), "s"), "x": [1.0]}], "points in one event"),
    ],
)
def test_bad_rows_frames_are_refused_with_a_reason(rows: Any, message: str) -> None:
    with pytest.raises(WireError, match=message):
        validate(_metrics_event(rows=rows))


def test_a_long_training_loop_is_sealed_into_bounded_events_of_frames() -> None:
    from runstream.ingest.run import EVENT_POINTS

    exp = Experiment("unit", settings=Settings().with_(kafka="127.0.0.1:9"))
    run = Run(exp, shipper=NullShipper())  # type: ignore[arg-type]
    steps = EVENT_POINTS // 3 + 7  # 3 metrics a step: more than one event's worth
    for i in range(steps):
        run.log_metrics({"a": 1.0 * i, "b": 2.0 * i, "c": 3.0 * i}, step=i)
    run.log("lat", 0.5)  # per-point columns in the same seal
    events = [ev for ev, _ in run._buffer.take_events() if ev["kind"] == "metrics"]
    sizes = [len(validate(ev).m) for ev in events]
    # The first call takes the general path (per-point columns), the rest are frames split at the bound.
    assert max(sizes) <= EVENT_POINTS and len(events) == 3 and sum("rows" in ev for ev in events) == 2
    points = _columns_of(events)
    assert len(points) == 3 * steps + 1
    assert ("lat", 0, 0.5) in points and ("c", steps - 1, 3.0 * (steps - 1)) in points
    assert len({(n, s) for n, s, _ in points}) == len(points)


def _columns_of(events: list[dict[str, Any]]) -> list[tuple[str, int, Any]]:
    """(name, step, value) of every point of the events, as the processor decodes them."""
    out = []
    for ev in events:
        v = validate(ev)
        out += [(ev["names"][i], s, x) for i, s, x in zip(v.m.tolist(), v.s.tolist(), v.v.tolist())]
    return out


def test_log_metrics_refuses_steps_beyond_int64_on_every_path() -> None:
    exp = Experiment("unit", settings=Settings().with_(kafka="127.0.0.1:9"))
    run = Run(exp, shipper=NullShipper())  # type: ignore[arg-type]
    run.log_metrics({"a": 1.0}, step=1)
    for call in (lambda: run.log_metrics({"a": 1.0}, step=2**63), lambda: run.log("a", 1.0, step=-(2**63) - 1)):
        with pytest.raises(InvalidInput, match="64-bit"):
            call()


def _event(run: str, names: list[str], m: list[int], s: list[int], v: list[float]) -> ValidatedEvent:
    ev: dict[str, Any] = {"v": 1, "id": f"{run}:{s[0]}", "kind": "metrics", "run": run, "project": "p", "ts": time.time(), "names": names}
    nf = [[i, "inf" if x > 0 else "-inf"] for i, x in enumerate(v) if math.isinf(x)]
    ev.update(m=m, s=s, x=[None if math.isinf(x) else x for x in v], nf=nf)
    return validate(ev)


def test_live_updates_from_many_points_keep_the_newest_points_and_the_true_range() -> None:
    n = 12 * LIVE_POINTS_PER_METRIC  # beyond SMALL_BATCH: the vectorised path
    events = [
        # Two events of one run whose name lists differ: indices are per event.
        _event("r", ["loss", "acc"], [0, 1] * (n // 2), [i // 2 for i in range(n)], [float(i) for i in range(n)]),
        _event("r", ["acc"], [0] * 10, list(range(n, n + 10)), [-5.0] * 9 + [math.inf]),
    ]
    (update,) = build_updates(events, {("p", "r"): "exp"}, {})
    loss, acc = update["metrics"]["loss"], update["metrics"]["acc"]
    assert loss["n"] == n // 2 and loss["truncated"] is True and len(loss["s"]) == LIVE_TAIL_POINTS
    assert loss["s"][-1] == n // 2 - 1 and loss["min"] == 0.0 and loss["max"] == float(n - 2)
    assert acc["n"] == n // 2 + 10 and acc["s"][-10:] == list(range(n, n + 10))
    assert acc["v"][-1] is None and acc["min"] == -5.0 and acc["max"] == float(n - 1)
    assert update["experiment"] == "exp"


def test_live_updates_for_a_few_points_carry_every_point() -> None:
    (update,) = build_updates([_event("r", ["loss"], [0, 0], [0, 1], [0.5, 0.25])], {("p", "r"): "exp"}, {("p", "r"): "Completed"})
    assert update["metrics"]["loss"] == {"s": [0, 1], "v": [0.5, 0.25], "n": 2, "min": 0.25, "max": 0.5}
    assert update["status"] == "Completed"


def test_producer_compression_is_none_on_this_host_and_lz4_across_a_network() -> None:
    from runstream.config import compression_for

    assert compression_for("auto", "localhost:9092") is None
    assert compression_for("auto", "127.0.0.1:9092,[::1]:9093") is None
    assert compression_for("auto", "127.0.0.1:9092,kafka-1:9092") == "lz4"
    assert compression_for("ZSTD", "localhost:9092") == "zstd" and compression_for("none", "kafka:9092") is None
    with pytest.raises(ValueError, match="RUNSTREAM_KAFKA_COMPRESSION"):
        Settings().with_(kafka_compression_setting="brotli")


def test_vectorised_live_points_match_the_plain_python_path() -> None:
    from runstream.processor.batch import metric_groups
    from runstream.processor.live import _group_points, _small_points

    rng = np.random.default_rng(7)
    events: dict[tuple[str, str], list[ValidatedEvent]] = {}
    for r in range(4):
        for e in range(3):
            names = [f"m{j}" for j in rng.permutation(6)[: rng.integers(2, 6)]]
            n = int(rng.integers(1, 400))
            v = rng.normal(size=n)
            v[rng.random(n) < 0.05] = math.inf
            # The last name (and, by chance, others) is used by no point of the event: no slot for it.
            m = rng.integers(0, len(names) - 1, n).tolist()
            ev = _event(f"r{r}", names, m, list(range(e * 1000, e * 1000 + n)), v.tolist())
            events.setdefault(("p", f"r{r}"), []).append(ev)
    vectorised: dict[Any, dict[str, Any]] = {key: {} for key in events}
    _group_points(vectorised, metric_groups([ev for evs in events.values() for ev in evs]))
    for key, evs in events.items():
        plain: dict[str, Any] = {}
        _small_points(plain, evs)
        got = vectorised[key]["metrics"]
        assert set(got) == set(plain)
        for name, slot in plain.items():
            keep = slot["n"] if slot["n"] <= LIVE_POINTS_PER_METRIC else LIVE_TAIL_POINTS
            assert got[name]["n"] == slot["n"]
            assert got[name]["s"] == slot["s"][-keep:] and got[name]["v"] == slot["v"][-keep:]
            assert (got[name].get("min"), got[name].get("max")) == (slot.get("min"), slot.get("max"))
