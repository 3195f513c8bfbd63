"""Unit tests (no services): the processor's run state (processor/runstate.py) applies tags
events, where a null value removes the tag (docs/events.md), and builds the runs row."""

from __future__ import annotations

from typing import Any

from runstream.processor.runstate import RunState, apply
from runstream.storage.schema import RUN_COLUMNS
from runstream.wire import validate

T0 = 1_700_000_000.0


def _event(kind: str, n: int, **payload: Any) -> dict[str, Any]:
    """A validated event's fields, as the processor applies them."""
    raw = {"v": 1, "id": f"w:{n}", "kind": kind, "run": "r1", "project": "p", "ts": T0 + n, **payload}
    return validate(raw).fields


def _tags_of_row(state: RunState) -> dict[str, str]:
    row = state.row(1)
    tags: dict[str, str] = row[list(RUN_COLUMNS).index("tags")]
    return tags


def test_a_null_tag_value_removes_the_tag_and_the_row_written_next_lacks_it() -> None:
    state = RunState(project="p", run_id="r1")
    apply(state, _event("run_start", 0, experiment="e", tags={"model": "mlp", "temp": "1"}))
    apply(state, _event("tags", 1, tags={"seed": 3, "note": ""}))
    assert _tags_of_row(state) == {"model": "mlp", "temp": "1", "seed": "3", "note": ""}
    before = _tags_of_row(state)
    state.dirty = False
    removal = _event("tags", 2, tags={"temp": None, "absent": None, "model": "cnn"})
    apply(state, removal)
    assert state.dirty
    assert state.tags == {"model": "cnn", "seed": "3", "note": ""}  # "" stays a tag without value
    assert _tags_of_row(state) == {"model": "cnn", "seed": "3", "note": ""}
    assert before["temp"] == "1"  # a row built earlier is a copy: later events do not change it
    apply(state, removal)  # applying an event twice gives the same state
    assert state.tags == {"model": "cnn", "seed": "3", "note": ""}
    apply(state, _event("tags", 3, tags={"temp": "again"}))  # a removed tag can be set again
    assert state.tags["temp"] == "again"


def test_a_null_tag_value_in_a_start_is_an_absent_tag() -> None:
    state = RunState(project="p", run_id="r1")
    apply(state, _event("tags", 0, tags={"kept": "yes"}))
    apply(state, _event("run_start", 1, experiment="e", tags={"kept": None, "other": None, "set": "x"}))
    assert state.tags == {"kept": "yes", "set": "x"}
    apply(state, _event("run_start", 2, experiment="e", tags=None))
    assert state.tags == {"kept": "yes", "set": "x"}
