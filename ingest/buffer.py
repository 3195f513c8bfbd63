"""A run's buffer: what the run has logged and Kafka has not yet acknowledged.

`RunBuffer` owns the lock shared by the training thread (which appends) and the
shipper thread (which drains), the open point columns and frames, the output
lines, the queue of sealed events and the event envelope (ids, sequence). The
run appends points, lines and events through it; the shipper drives it through
`Outbox`: take the sealed events, requeue those it could not send (in order, at
the front), count the acknowledged points. A buffer refuses points while its
`Sink` (the shipper) is over its memory bound, and tells it when it fills.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from runstream.errors import InputError
from runstream.wire import PACKED_DTYPES, WIRE_VERSION, pack

_INF = math.inf
_time = time.time
# Points per metrics event: keeps each Kafka message well under a megabyte.
EVENT_POINTS = 20_000

# A sealed event and the metric points it carries (acknowledged points leave the bound).
Event = tuple[dict[str, Any], int]


class Sink(Protocol):
    """What a buffer needs from its shipper."""

    @property
    def over_limit(self) -> bool:
        """Every run's unacknowledged points together are at the memory bound."""
        ...

    def nudge(self) -> None:
        """A buffer holds an event's worth of points: drain it soon."""

    def drop(self, n: int) -> None:
        """n points were refused at the memory bound."""


class Outbox(Protocol):
    """What the shipper needs from a run's buffer."""

    @property
    def run_id(self) -> str: ...

    @property
    def buffered(self) -> int:
        """Points appended and not yet acknowledged."""
        ...

    def has_pending(self) -> bool: ...

    def take_events(self) -> list[Event]:
        """Seal what is open and hand over every event, oldest first."""
        ...

    def requeue(self, events: list[Event]) -> None:
        """Put events taken and not delivered back ahead of the rest, in their order."""

    def acked(self, points: int) -> None: ...

    def heartbeat(self) -> None:
        """Queue a heartbeat unless the run has ended."""


class _Points:
    """Points appended since the last seal: per-point columns (m, s, v, t, sv, nf) for
    anything, and frames (the same metric indexes at many steps) for the training-loop
    case, where a row costs one step, one time and the values, not four items a point."""

    __slots__ = ("m", "s", "v", "t", "sv", "nf", "frames", "frame_key", "fs", "ft", "fx", "n")

    def __init__(self) -> None:
        self.m: list[int] = []
        self.s: list[int] = []
        self.v: list[float | None] = []
        self.t: list[float] = []
        self.sv: list[list[Any]] = []
        self.nf: list[list[Any]] = []
        self.frames: list[tuple[list[int], list[int], list[float], list[float]]] = []
        self.frame_key: list[int] | None = None  # the open frame's metric indexes
        self.fs: list[int] = []
        self.ft: list[float] = []
        self.fx: list[float] = []
        self.n = 0  # points in the buffer, columns and frames

    def open_frame(self, idxs: list[int]) -> None:
        self.frame_key = idxs
        self.fs, self.ft, self.fx = [], [], []
        self.frames.append((idxs, self.fs, self.ft, self.fx))

    def special(self, pos: int, value: float | str) -> None:
        """A string or non-finite value at column position `pos`: null in x, given in sv or nf."""
        self.v.append(None)
        if isinstance(value, str):
            self.sv.append([pos, value])
        else:
            self.nf.append([pos, "nan" if value != value else ("inf" if value > 0 else "-inf")])


class RunBuffer:
    """The events of one run between its logging calls and the shipper.

    names: the run's metric names by index; the run only ever appends to it, and
    appends a name before any point that uses its index."""

    def __init__(self, run_id: str, project: str, names: Sequence[str], sink: Sink) -> None:
        self.run_id = run_id
        self.project = project
        self.buffered = 0  # read unlocked by the shipper's memory bound: an int read is atomic
        self._names = names
        self._sink = sink
        self._lock = threading.Lock()
        self._points = _Points()
        self._desc: dict[str, str] = {}
        self._logs: dict[str, tuple[list[str], list[float]]] = {}
        self._pending: list[Event] = []
        self._session = secrets.token_hex(8)  # event ids: unique per writer, so replays are harmless
        self._seq = 0
        self._ended = False

    @property
    def events(self) -> int:
        """Events made so far: the sequence number of the newest."""
        return self._seq

    # --- the run appends ---
    def add_point(self, idx: int, step: int, value: float | str) -> None:
        """One point of metric `idx`: log()'s path, apart from add_points so that a single
        point builds no lists."""
        sink = self._sink
        if sink.over_limit:
            sink.drop(1)
            return
        with self._lock:
            points = self._points  # read under the lock: a seal swaps it
            if type(value) is float and -_INF < value < _INF:
                points.v.append(value)
            else:
                points.special(len(points.m), value)
            points.m.append(idx)
            points.s.append(step)
            points.t.append(_time())
            points.n += 1
            self.buffered += 1
            full = points.n >= EVENT_POINTS
        if full:
            sink.nudge()

    def add_points(self, m: list[int], s: list[int], x: Sequence[float | str], now: float) -> bool:
        """Points in columns (metric index, step, value), all at time `now`; False if refused."""
        n = len(m)
        sink = self._sink
        if sink.over_limit:
            sink.drop(n)
            return False
        with self._lock:
            points = self._points
            pos = len(points.m)
            for i, value in enumerate(x):
                if type(value) is float and -_INF < value < _INF:
                    points.v.append(value)
                else:
                    points.special(pos + i, value)
            points.m += m
            points.s += s
            points.t += [now] * n
            points.n += n
            self.buffered += n
            full = points.n >= EVENT_POINTS
        if full:
            sink.nudge()
        return True

    def add_row(self, idxs: list[int], step: int, values: list[float], now: float) -> bool:
        """One training-loop row: finite float values of the metrics `idxs` at `step`
        (kept as a frame); False if refused. `idxs` is compared by identity: pass the
        same list for the same name set."""
        n = len(idxs)
        sink = self._sink
        if sink.over_limit:
            sink.drop(n)
            return False
        with self._lock:
            points = self._points
            if points.frame_key is not idxs:
                points.open_frame(idxs)
            points.fs.append(step)
            points.ft.append(now)
            points.fx += values
            points.n += n
            self.buffered += n
            full = points.n >= EVENT_POINTS
        if full:
            sink.nudge()
        return True

    def add_lines(self, stream: str, lines: list[str], now: float) -> None:
        """Output log lines of `stream`, all at time `now`."""
        with self._lock:
            have, times = self._logs.setdefault(stream, ([], []))
            have += lines
            times += [now] * len(lines)

    def describe(self, name: str, description: str) -> None:
        """A metric's description, sent with the next metrics event."""
        with self._lock:
            self._desc[name] = description

    def enqueue(self, kind: str, payload: dict[str, Any], *, last: bool = False) -> None:
        """An event of `kind`, after everything appended before it. last: the run's end
        (no heartbeat follows it)."""
        with self._lock:
            self._seal()
            self._pending.append((self._event(kind, payload), 0))
            if last:
                self._ended = True

    # --- the shipper drains (Outbox) ---
    def heartbeat(self) -> None:
        with self._lock:
            if not self._ended:
                self._seal()
                self._pending.append((self._event("heartbeat", {}), 0))

    def has_pending(self) -> bool:
        return bool(self._pending or self._points.n or any(lines for lines, _ in self._logs.values()))

    def take_events(self) -> list[Event]:
        with self._lock:
            self._seal()
            events, self._pending = self._pending, []
        # Packing happens outside the lock, so the training thread never waits on it
        # (and only once: a requeued event is already packed).
        for event, points in events:
            if points and event["kind"] == "metrics":
                if type(event.get("m")) is list:
                    for column in PACKED_DTYPES:
                        event[column] = pack(event[column], column)
                for frame in event.get("rows", ()):
                    if type(frame["s"]) is list:
                        for column in ("s", "t", "x"):
                            frame[column] = pack(frame[column], column)
        return events

    def requeue(self, events: list[Event]) -> None:
        with self._lock:
            self._pending[:0] = events

    def acked(self, points: int) -> None:
        if points:
            with self._lock:
                self.buffered -= points

    # --- under the lock ---
    def _event(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        payload.update(
            {"v": WIRE_VERSION, "id": f"{self._session}:{self._seq}", "kind": kind, "run": self.run_id, "project": self.project, "ts": _time()}
        )
        return payload

    def _seal(self) -> None:
        """Turn the open points and lines into events, after those already queued."""
        buf = self._points
        if buf.n:
            self._points = _Points()
            # Each payload: (wire fields, points, highest metric index used).
            payloads: list[tuple[dict[str, Any], int, int]] = []
            n = len(buf.m)
            for lo in range(0, n, EVENT_POINTS):
                hi = min(n, lo + EVENT_POINTS)
                payload: dict[str, Any] = {
                    "m": buf.m[lo:hi] if n > EVENT_POINTS else buf.m,
                    "s": buf.s[lo:hi] if n > EVENT_POINTS else buf.s,
                    "x": buf.v[lo:hi] if n > EVENT_POINTS else buf.v,
                    "t": buf.t[lo:hi] if n > EVENT_POINTS else buf.t,
                }
                sv = [[i - lo, x] for i, x in buf.sv if lo <= i < hi]
                nf = [[i - lo, x] for i, x in buf.nf if lo <= i < hi]
                if sv:
                    payload["sv"] = sv
                if nf:
                    payload["nf"] = nf
                payloads.append((payload, hi - lo, max(buf.m[lo:hi])))
            for idxs, steps, times, values in buf.frames:
                width = len(idxs)
                per = max(1, EVENT_POINTS // width)
                for lo in range(0, len(steps), per):
                    hi = min(len(steps), lo + per)
                    whole = lo == 0 and hi == len(steps)
                    frame = {
                        "m": idxs,
                        "s": steps if whole else steps[lo:hi],
                        "t": times if whole else times[lo:hi],
                        "x": values if whole else values[lo * width : hi * width],
                    }
                    points = (hi - lo) * width
                    if payloads and payloads[-1][1] + points <= EVENT_POINTS:
                        payload, had, top = payloads[-1]
                        payload.setdefault("rows", []).append(frame)
                        payloads[-1] = (payload, had + points, max(top, max(idxs)))
                    else:
                        payloads.append(({"rows": [frame]}, points, max(idxs)))
            for payload, points, top in payloads:
                payload["names"] = self._names[: top + 1]
                if self._desc:
                    payload["desc"], self._desc = self._desc, {}
                self._pending.append((self._event("metrics", payload), points))
        for stream, (lines, times) in self._logs.items():
            if lines:
                self._logs[stream] = ([], [])
                self._pending.append((self._event("log", {"stream": stream, "lines": lines, "t": times}), 0))


class ReadOnlyRun(InputError):
    """A logging call on a read-only handle (`Run(experiment, run_id)`)."""


class ReadOnlyBuffer:
    """The buffer of a read-only handle: it never has anything to send, and every append
    raises, so a handle on someone else's run cannot change it."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.events = 0

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise ReadOnlyRun(f"run {self.run_id!r} is a read-only handle (Run(experiment, run_id)); it cannot log")

    add_point = add_points = add_row = add_lines = describe = enqueue = _refuse
