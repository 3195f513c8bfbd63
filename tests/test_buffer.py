"""Unit tests (no services): a run's buffer seals what was appended into events in order,
hands them over packed, takes undelivered events back ahead of newer ones, counts
unacknowledged points, and refuses points while its sink is over the memory bound."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from runstream.ingest.buffer import EVENT_POINTS, Event, RunBuffer
from runstream.wire import PACKED_DTYPES

T0 = 1_700_000_000.0


class _Sink:
    def __init__(self, over_limit: bool = False) -> None:
        self.over_limit = over_limit
        self.dropped: list[int] = []
        self.nudges = 0

    def nudge(self) -> None:
        self.nudges += 1

    def drop(self, n: int) -> None:
        self.dropped.append(n)


def _unpack(text: str, column: str) -> list[Any]:
    return np.frombuffer(base64.b64decode(text), dtype=PACKED_DTYPES[column]).tolist()


def _seqs(events: list[Event]) -> list[int]:
    return [int(ev["id"].rsplit(":", 1)[1]) for ev, _ in events]


def test_appends_are_sealed_into_events_in_the_order_they_were_made() -> None:
    names = ["loss", "acc", "lr"]
    buffer = RunBuffer("r1", "p", names, _Sink())
    buffer.add_point(0, 0, 0.5)
    buffer.add_point(1, 0, math.nan)
    buffer.describe("loss", "training loss")
    buffer.enqueue("tags", {"tags": {"k": "v"}})  # seals the two points into an event before it
    assert buffer.add_points([0, 1], [1, 1], [0.25, "warmup"], T0)
    buffer.add_lines("stdout", ["epoch 1", "epoch 2"], T0)
    assert buffer.add_row([0, 1], 2, [0.125, 0.75], T0 + 1)
    events = buffer.take_events()
    assert [ev["kind"] for ev, _ in events] == ["metrics", "tags", "metrics", "log"]
    assert _seqs(events) == [1, 2, 3, 4] and buffer.events == 4
    assert {ev["run"] for ev, _ in events} == {"r1"} and {ev["project"] for ev, _ in events} == {"p"}
    assert [points for _, points in events] == [2, 0, 4, 0]
    first, _, second, lines = (ev for ev, _ in events)
    # Names up to the highest index used; a description rides on the next metrics event once.
    assert first["names"] == ["loss", "acc"] and first["desc"] == {"loss": "training loss"} and "desc" not in second
    assert _unpack(first["m"], "m") == [0, 1] and _unpack(first["s"], "s") == [0, 0]
    assert _unpack(first["x"], "x")[0] == 0.5 and math.isnan(_unpack(first["x"], "x")[1]) and first["nf"] == [[1, "nan"]]
    assert _unpack(second["x"], "x")[0] == 0.25 and second["sv"] == [[1, "warmup"]] and _unpack(second["t"], "t") == [T0, T0]
    (frame,) = second["rows"]
    assert frame["m"] == [0, 1] and _unpack(frame["s"], "s") == [2] and _unpack(frame["x"], "x") == [0.125, 0.75]
    assert lines["stream"] == "stdout" and lines["lines"] == ["epoch 1", "epoch 2"] and lines["t"] == [T0, T0]
    assert buffer.take_events() == [] and not buffer.has_pending()


def test_requeued_events_go_back_ahead_of_newer_ones_in_their_order() -> None:
    buffer = RunBuffer("r1", "p", ["loss"], _Sink())
    for step in range(3):
        buffer.add_point(0, step, float(step))
        buffer.enqueue("tags", {"tags": {f"k{step}": ""}})
    taken = buffer.take_events()
    assert _seqs(taken) == [1, 2, 3, 4, 5, 6]
    buffer.enqueue("params", {"params": {"lr": "0.1"}})  # logged while the shipper held the events
    buffer.requeue(taken[2:])
    again = buffer.take_events()
    assert _seqs(again) == [3, 4, 5, 6, 7]
    # A requeued event was packed when first taken and is handed over as it was.
    assert again[0] == taken[2] and _unpack(again[0][0]["x"], "x") == [1.0]


def test_buffered_counts_points_until_they_are_acknowledged() -> None:
    buffer = RunBuffer("r1", "p", ["a", "b"], _Sink())
    buffer.add_point(0, 0, 1.0)
    buffer.add_points([0, 1], [1, 1], [1.0, 2.0], T0)
    buffer.add_row([0, 1], 2, [1.0, 2.0], T0)
    assert buffer.buffered == 5
    events = buffer.take_events()
    assert buffer.buffered == 5  # taken is not delivered
    buffer.acked(sum(points for _, points in events))
    assert buffer.buffered == 0


def test_points_are_refused_and_counted_as_dropped_while_the_sink_is_over_its_limit() -> None:
    sink = _Sink(over_limit=True)
    buffer = RunBuffer("r1", "p", ["a", "b"], sink)
    buffer.add_point(0, 0, 1.0)
    assert not buffer.add_points([0, 1], [1, 1], [1.0, 2.0], T0)
    assert not buffer.add_row([0, 1], 2, [1.0, 2.0], T0)
    assert sink.dropped == [1, 2, 2] and buffer.buffered == 0 and not buffer.has_pending()
    buffer.enqueue("tags", {"tags": {"k": "v"}})  # events other than points are kept
    sink.over_limit = False
    buffer.add_point(0, 3, 1.0)
    assert [(ev["kind"], points) for ev, points in buffer.take_events()] == [("tags", 0), ("metrics", 1)]


def test_a_buffer_holding_an_events_worth_of_points_nudges_its_sink_once_per_append() -> None:
    sink = _Sink()
    buffer = RunBuffer("r1", "p", ["a"], sink)
    buffer.add_points([0] * (EVENT_POINTS - 1), list(range(EVENT_POINTS - 1)), [1.0] * (EVENT_POINTS - 1), T0)
    assert sink.nudges == 0
    buffer.add_point(0, EVENT_POINTS - 1, 1.0)
    assert sink.nudges == 1
    assert sum(points for _, points in buffer.take_events()) == EVENT_POINTS


def test_no_heartbeat_follows_the_last_event() -> None:
    buffer = RunBuffer("r1", "p", [], _Sink())
    buffer.heartbeat()
    buffer.enqueue("run_end", {"status": "Completed", "error": ""}, last=True)
    buffer.heartbeat()
    assert [ev["kind"] for ev, _ in buffer.take_events()] == ["heartbeat", "run_end"]
