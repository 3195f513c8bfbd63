"""Unit tests (no services): packed metric columns, the client's log_metrics fast
path against its general path, and live updates built from many points."""

from __future__ import annotations

import base64
import math
import time
from typing import Any

import numpy as np
import pytest

from ingest.run import Experiment, Run
from ingest.values import InvalidInput
from processor.live import LIVE_POINTS_PER_METRIC, build_updates
from runstream.config import Settings
from runstream.wire import WireError, pack, validate


def _metrics_event(**columns: Any) -> dict[str, Any]:
    event = {"v": 1, "id": "w:1", "kind": "metrics", "run": "r1", "project": "p", "ts": 1_700_000_000.0, "names": ["loss", "acc"]}
    event.update(columns)
    return event


def test_packed_columns_decode_to_the_same_arrays_as_json_arrays() -> None:
    m, s, x, t = [0, 1, 0, 1], [0, 0, 1, 1], [0.5, 0.9, 0.25, 0.95], [1_700_000_000.0 + i for i in range(4)]
    plain = validate(_metrics_event(m=m, s=s, x=x, t=t))
    packed = validate(_metrics_event(m=pack(m, "m"), s=pack(s, "s"), x=pack(x, "x"), t=pack(t, "t")))
    for key in ("_m", "_s", "_v", "_t"):
        assert np.array_equal(plain[key], packed[key]), key
    assert packed["_s"].dtype == np.int64 and packed["_v"].dtype == np.float64


def test_packed_values_take_nonfinite_and_string_values_through_nf_and_sv() -> None:
    x = pack([1.0, None, None], "x")  # None packs as NaN: "the value is given elsewhere"
    ev = validate(_metrics_event(names=["a"], m=pack([0, 0, 0], "m"), s=pack([0, 1, 2], "s"), x=x, nf=[[1, "-inf"]], sv=[[2, "warmup"]]))
    assert ev["_v"][0] == 1.0 and ev["_v"][1] == -math.inf and math.isnan(ev["_v"][2])
    assert ev["_sv"] == [(2, "warmup")]


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


class _Shipper:
    """Stands in for the network side: the test looks at what the run buffered."""

    over_limit = False

    def register(self, run: Run) -> None: ...

    def nudge(self) -> None: ...

    def drop(self, n: int) -> None: ...


def _columns(run: Run) -> list[tuple[str, int, Any]]:
    events = [ev for ev, _ in run._take_events() if ev["kind"] == "metrics"]
    out = []
    for ev in events:
        v = validate(ev)
        for i, step, value in zip(v["_m"].tolist(), v["_s"].tolist(), v["_v"].tolist()):
            out.append((ev["names"][i], step, value))
    return out


def test_log_metrics_fast_path_buffers_exactly_what_the_general_path_does() -> None:
    exp = Experiment("unit", settings=Settings().with_(kafka="127.0.0.1:9"))
    fast, general = (Run(exp, shipper=_Shipper()) for _ in range(2))  # type: ignore[arg-type]
    steps = [{"loss": 1.0 / (i + 1), "acc": i / 10} for i in range(5)]
    for i, metrics in enumerate(steps):
        fast.log_metrics(metrics, step=i)  # dict + int step + finite floats: the fast path after the first call
        general._log_metrics_general(metrics, i, "")
    fast.log_metrics({"loss": math.nan, "acc": 0.5}, step=5)  # a NaN leaves the fast path
    general._log_metrics_general({"loss": math.nan, "acc": 0.5}, 5, "")
    fast.log("loss", 0.1)  # the next index after the last explicit step
    general.log("loss", 0.1)
    a, b = _columns(fast), _columns(general)
    assert [(n, s) for n, s, _ in a] == [(n, s) for n, s, _ in b]
    assert np.allclose([x for *_, x in a], [x for *_, x in b], equal_nan=True)
    assert a[-1] == ("loss", 6, 0.1)


def test_log_metrics_refuses_steps_beyond_int64_on_every_path() -> None:
    exp = Experiment("unit", settings=Settings().with_(kafka="127.0.0.1:9"))
    run = Run(exp, shipper=_Shipper())  # type: ignore[arg-type]
    run.log_metrics({"a": 1.0}, step=1)
    for call in (lambda: run.log_metrics({"a": 1.0}, step=2**63), lambda: run.log("a", 1.0, step=-(2**63) - 1)):
        with pytest.raises(InvalidInput, match="64-bit"):
            call()


def _event(run: str, names: list[str], m: list[int], s: list[int], v: list[float]) -> dict[str, Any]:
    ev: dict[str, Any] = {"v": 1, "id": f"{run}:{s[0]}", "kind": "metrics", "run": run, "project": "p", "ts": time.time(), "names": names}
    nf = [[i, "inf" if x > 0 else "-inf"] for i, x in enumerate(v) if math.isinf(x)]
    ev.update(m=m, s=s, x=[None if math.isinf(x) else x for x in v], nf=nf)
    return validate(ev)


def test_live_updates_from_many_points_keep_the_newest_points_and_the_true_range() -> None:
    n = 3 * LIVE_POINTS_PER_METRIC
    events = [
        # Two events of one run whose name lists differ: indices are per event.
        _event("r", ["loss", "acc"], [0, 1] * (n // 2), [i // 2 for i in range(n)], [float(i) for i in range(n)]),
        _event("r", ["acc"], [0] * 10, list(range(n, n + 10)), [-5.0] * 9 + [math.inf]),
    ]
    (update,) = build_updates(events, {("p", "r"): "exp"}, {})
    loss, acc = update["metrics"]["loss"], update["metrics"]["acc"]
    assert loss["n"] == n // 2 and loss["truncated"] is True and len(loss["s"]) == LIVE_POINTS_PER_METRIC
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
