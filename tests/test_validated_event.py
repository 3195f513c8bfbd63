"""Unit tests (no services): validate() returns a typed ValidatedEvent and leaves the caller's dict as it was."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from runstream.errors import InputError
from runstream.events import ValidatedEvent
from runstream.wire import WireError, pack, validate

T0 = 1_700_000_000.0


def _envelope(kind: str, **payload: Any) -> dict[str, Any]:
    return {"v": 1, "id": f"w:{kind}", "kind": kind, "run": "r1", "project": "p", "ts": 1_700_000_000, **payload}


EVENTS = [
    _envelope("metrics", names=["loss"], m=pack([0, 0], "m"), s=pack([1, 2], "s"), x=pack([0.5, 0.25], "x")),
    _envelope("metrics", names=["loss"], m=[0], s=[3], x=[None], sv=[[0, "warmup"]], desc={"loss": 1}),
    _envelope("metrics", names=["a", "b"], rows=[{"m": [1, 0], "s": pack([4], "s"), "x": pack([1.0, 2.0], "x")}]),
    _envelope("log", stream="stdout", lines=["x" * 20_000, "ok"], t=[T0, T0 + 1]),
    _envelope("run_start", experiment="e", tags={"lr": 0.1}, params={"depth": 3, "on": True}),
    _envelope("tags", tags={"k": None, "n": 2}),
    _envelope("params", params={"k": 1.5}),
    _envelope("file", path="a/b.png"),
    _envelope("table", name="t", columns={"c": [1, "x", None]}),
    _envelope("run_end", status="Completed"),
    _envelope("heartbeat"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: str(e["kind"]))
def test_validate_returns_a_typed_event_and_does_not_change_the_callers_dict(event: dict[str, Any]) -> None:
    before = copy.deepcopy(event)
    got = validate(event)
    assert isinstance(got, ValidatedEvent)
    assert event == before
    assert (got.kind, got.id, got.run, got.project, got.ts) == (event["kind"], event["id"], "r1", "p", float(event["ts"]))
    assert type(got.ts) is float
    assert got.fields.keys() >= event.keys()
    assert got.m.dtype == got.s.dtype == np.int64 and got.v.dtype == got.t.dtype == np.float64
    if event["kind"] == "metrics":
        assert len(got.m) == len(got.s) == len(got.v) == len(got.t) > 0
        assert ((got.m >= 0) & (got.m < len(got.fields["names"]))).all()
    else:
        assert len(got.m) == len(got.s) == len(got.v) == len(got.sv) == 0
    if event["kind"] == "log":
        assert len(got.t) == len(got.fields["lines"]) and len(got.fields["lines"][0]) < len(event["lines"][0])


def test_normalised_fields_are_the_validated_events_own() -> None:
    event = EVENTS[4]
    got = validate(event)
    assert got.fields["tags"] == {"lr": "0.1"} and got.fields["params"] == {"depth": "3", "on": "true"}
    assert got.fields["status"] == "Running" and "status" not in event
    assert got.fields is not event
    metrics = validate(EVENTS[1])
    assert metrics.fields["desc"] == {"loss": "1"} and EVENTS[1]["desc"] == {"loss": 1}
    assert metrics.sv == [(0, "warmup")]


def test_columns_of_every_kind_are_empty_by_default_and_shared() -> None:
    a = ValidatedEvent({}, "heartbeat", "w:1", "r", "p", T0)
    b = ValidatedEvent({}, "heartbeat", "w:2", "r", "p", T0)
    assert len(a.m) == len(a.t) == 0 and a.m is b.m and not a.m.flags.writeable
    assert a.sv == [] and a.sv is not b.sv


def test_a_wire_error_is_an_input_error_and_a_value_error() -> None:
    with pytest.raises(InputError) as info:
        validate(_envelope("nope"))
    assert isinstance(info.value, WireError) and isinstance(info.value, ValueError)
