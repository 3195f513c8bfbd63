"""Run and Experiment: the logging API of the reference, over Kafka.

Logging calls validate their input, append to in-memory buffers under a
per-run lock and return; the shipper thread does all network work.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from runstream.ingest import capture
from runstream.ingest.shipper import Shipper, get_shipper
from runstream.ingest.values import InvalidInput, check_name, coerce_scalar_text, coerce_value

from runstream.config import Settings
from runstream.wire import MAX_LOG_LINE, PACKED_DTYPES, TERMINAL_STATUSES, WIRE_VERSION, pack

_INF = math.inf
# Steps are Int64 in storage; the last one logged must leave room for its successor.
_STEP_MIN, _STEP_MAX = -(2**63), 2**63 - 1
_time = time.time
# Points per metrics event: keeps each Kafka message well under a megabyte.
EVENT_POINTS = 20_000


class _MetricBuffer:
    """Points logged since the last seal: per-point columns (m, s, v, t, sv, nf) for
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


class Experiment:
    """A named group of runs in a project (RUNSTREAM_PROJECT by default)."""

    def __init__(self, name: str, project: str | None = None, *, settings: Settings | None = None) -> None:
        self.name = check_name(name, "experiment name")
        self.settings = settings or Settings()
        self.project = check_name(project or self.settings.project, "project")

    def start_logging(
        self,
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        capture_output: bool | None = None,
        **_ignored: Any,
    ) -> Run:
        """Start an interactive run; end it with complete(), or use it as a context manager.

        capture_output: tee this process's stdout/stderr into the run's output log
        (default on, unless RUNSTREAM_CAPTURE_OUTPUT=0)."""
        if capture_output is None:
            capture_output = os.environ.get("RUNSTREAM_CAPTURE_OUTPUT", "1") != "0"
        return Run(self, name=name, tags=tags, params=params, run_id=run_id, capture_output=capture_output)

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r}, project={self.project!r})"


class Run:
    """One execution of a training script; every logging call is non-blocking."""

    def __init__(
        self,
        experiment: Experiment,
        *,
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        parent: Run | None = None,
        attach: bool = False,
        shipper: Shipper | None = None,
        capture_output: bool = False,
    ) -> None:
        self.experiment = experiment
        self.settings = experiment.settings
        self.project = experiment.project
        self.id = check_name(run_id, "run id") if run_id else f"{uuid.uuid4().hex[:20]}"
        self.name = check_name(name, "run name") if name else self.id
        self.parent = parent
        self.status = "Running"
        self._session = secrets.token_hex(8)  # event ids: unique per writer, so replays are harmless
        self._seq = 0
        self._lock = threading.Lock()
        self._buf = _MetricBuffer()
        self._names: list[str] = []
        self._name_idx: dict[str, int] = {}
        self._key_cache: dict[tuple[str, ...], list[int]] = {}  # log_metrics name sets seen before
        self._next_step: list[int] = []
        self._desc: dict[str, str] = {}
        self._table_rows: dict[str, int] = {}
        self._logs: dict[str, tuple[list[str], list[float]]] = {}
        self._pending: list[tuple[dict[str, Any], int]] = []
        self._points_logged = 0
        self._buffered = 0  # points logged and not yet acknowledged by Kafka
        self._files: list[str] = []
        self._shipper = shipper or get_shipper(self.settings)
        self._shipper.register(self)
        start: dict[str, Any] = {
            "experiment": experiment.name,
            "name": self.name,
            "tags": {check_name(k, "tag key"): coerce_scalar_text(v, f"tag {k!r}") for k, v in (tags or {}).items()},
            "params": {check_name(k, "param name"): coerce_scalar_text(v, f"param {k!r}") for k, v in (params or {}).items()},
            "status": "Running",
        }
        if parent is not None:
            start["parent"] = parent.id
        self._enqueue("run_start" if not attach else "run_status", start if not attach else {"status": "Running"})
        self._capturing = capture_output and capture.start(self)

    # --- identity ---
    @classmethod
    def get_context(cls, *, settings: Settings | None = None) -> Run:
        """The run of a submitted script (RUNSTREAM_RUN_ID), else a new interactive run."""
        settings = settings or Settings()
        experiment = Experiment(os.environ.get("RUNSTREAM_EXPERIMENT", "Default"), settings=settings)
        capture_output = os.environ.get("RUNSTREAM_CAPTURE_OUTPUT", "1") != "0"
        if settings.run_id:
            return cls(experiment, run_id=settings.run_id, attach=True, capture_output=capture_output)
        return cls(experiment, capture_output=capture_output)

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, name={self.name!r}, experiment={self.experiment.name!r}, status={self.status!r})"

    # --- envelope ---
    def _event(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        payload.update(
            {"v": WIRE_VERSION, "id": f"{self._session}:{self._seq}", "kind": kind, "run": self.id, "project": self.project, "ts": _time()}
        )
        return payload

    def _enqueue(self, kind: str, payload: dict[str, Any], points: int = 0) -> None:
        with self._lock:
            self._seal()
            self._pending.append((self._event(kind, payload), points))

    # --- metrics (the hot path) ---
    def _register(self, name: str, description: str) -> int:
        check_name(name)
        with self._lock:
            idx = self._name_idx.get(name)
            if idx is None:
                idx = len(self._names)
                self._names.append(name)
                self._next_step.append(0)
                self._name_idx[name] = idx
        if description:
            self._desc[name] = str(description)
        return idx

    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """Log a value; logging the same name again appends (the metric becomes a vector)."""
        idx = self._name_idx.get(name)
        if idx is None:
            idx = self._register(name, description)
        elif description:
            self._desc[name] = str(description)
        if type(value) is not float or not -_INF < value < _INF:
            value = coerce_value(value, name)
        if step is None:
            step = self._next_step[idx]
        elif type(step) is not int or not _STEP_MIN <= step < _STEP_MAX:
            step = self._check_step(step)
        self._next_step[idx] = step + 1
        if self._shipper.over_limit:
            self._shipper.drop(1)
            return
        with self._lock:
            buf = self._buf  # read under the lock: the shipper swaps buffers
            if type(value) is float and -_INF < value < _INF:
                buf.v.append(value)
            else:
                self._special(buf, value)
            buf.m.append(idx)
            buf.s.append(step)
            buf.t.append(_time())
            buf.n += 1
            self._buffered += 1
            full = buf.n >= EVENT_POINTS
        self._points_logged += 1
        if full:
            self._shipper.nudge()

    @staticmethod
    def _check_step(step: Any) -> int:
        if isinstance(step, bool) or not isinstance(step, int):
            try:
                import operator

                step = operator.index(step)
            except TypeError:
                raise InvalidInput(f"step must be an integer, got {type(step).__name__}: {step!r}") from None
        if not _STEP_MIN <= step < _STEP_MAX:
            raise InvalidInput(f"step {step} is outside the 64-bit signed range")
        return int(step)

    @staticmethod
    def _special(buf: _MetricBuffer, value: float | str) -> None:
        pos = len(buf.m)
        buf.v.append(None)
        if isinstance(value, str):
            buf.sv.append([pos, value])
        else:
            buf.nf.append([pos, "nan" if value != value else ("inf" if value > 0 else "-inf")])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, description: str = "") -> None:
        """Log several metrics at one step (each at its own next index if step is None)."""
        if type(metrics) is dict and type(step) is int and _STEP_MIN <= step < _STEP_MAX and not description:
            # The training-loop case: the same known names every step, finite floats.
            # Extending the columns with whole lists costs a few C calls, not a Python
            # loop per value; anything unusual takes the general path below.
            idxs = self._key_cache.get(tuple(metrics))
            if idxs is not None:
                values = list(metrics.values())
                try:
                    total = sum(values)
                except (TypeError, OverflowError):  # a string, None, an int too large for a float...
                    total = None
                # A float sum (one C call, ~0.35 µs cheaper than a type check per value) means
                # floats, ints and bools: what the general path would coerce to these same
                # floats. Its finiteness means every value is finite. Numpy scalars make a
                # numpy sum and take the general path.
                if type(total) is float and total - total == 0.0:
                    self._append_row(idxs, values, step)
                    return
        self._log_metrics_general(metrics, step, description)

    def _append_row(self, idxs: list[int], values: list[float], step: int) -> None:
        n = len(idxs)
        if self._shipper.over_limit:
            self._shipper.drop(n)
            return
        now = _time()
        next_step = self._next_step
        with self._lock:
            buf = self._buf  # read under the lock: the shipper swaps buffers
            if buf.frame_key is not idxs:
                buf.open_frame(idxs)
            buf.fs.append(step)
            buf.ft.append(now)
            buf.fx += values
            buf.n += n
            self._buffered += n
            full = buf.n >= EVENT_POINTS
        step += 1
        for idx in idxs:
            next_step[idx] = step
        self._points_logged += n
        if full:
            self._shipper.nudge()

    def _log_metrics_general(self, metrics: Mapping[str, Any], step: int | None, description: str) -> None:
        if not isinstance(metrics, Mapping):
            raise InvalidInput(f"log_metrics takes a mapping of name -> value, got {type(metrics).__name__}")
        name_idx = self._name_idx
        items = []
        for name, value in metrics.items():
            idx = name_idx.get(name)
            if idx is None:
                idx = self._register(name, description)
            if type(value) is not float or not -_INF < value < _INF:
                value = coerce_value(value, name)
            items.append((idx, value))
        if type(metrics) is dict and len(self._key_cache) < 1024:
            self._key_cache[tuple(metrics)] = [idx for idx, _ in items]
        if step is not None:
            step = self._check_step(step)
        if self._shipper.over_limit:
            self._shipper.drop(len(items))
            return
        next_step = self._next_step
        now = _time()
        with self._lock:
            buf = self._buf  # read under the lock: the shipper swaps buffers
            for idx, value in items:
                s = next_step[idx] if step is None else step
                next_step[idx] = s + 1
                if type(value) is float and -_INF < value < _INF:
                    buf.v.append(value)
                else:
                    self._special(buf, value)
                buf.m.append(idx)
                buf.s.append(s)
                buf.t.append(now)
            buf.n += len(items)
            self._buffered += len(items)
            full = buf.n >= EVENT_POINTS
        self._points_logged += len(items)
        if full:
            self._shipper.nudge()

    def log_list(self, name: str, value: Iterable[Any], description: str = "") -> None:
        """Log a whole list of values at once (appended after earlier values of the name)."""
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise InvalidInput(f"log_list({name!r}) takes a list of values, got {type(value).__name__}")
        values = [coerce_value(v, name) for v in value]
        idx = self._name_idx.get(name)
        if idx is None:
            idx = self._register(name, description)
        if not values:
            return
        if self._shipper.over_limit:
            self._shipper.drop(len(values))
            return
        now = _time()
        with self._lock:
            buf = self._buf  # read under the lock: the shipper swaps buffers
            start = self._next_step[idx]
            for i, v in enumerate(values):
                if type(v) is float and -_INF < v < _INF:
                    buf.v.append(v)
                else:
                    self._special(buf, v)
                buf.m.append(idx)
                buf.s.append(start + i)
                buf.t.append(now)
            self._next_step[idx] = start + len(values)
            buf.n += len(values)
            self._buffered += len(values)
        self._points_logged += len(values)

    # --- rows and tables ---
    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        """One row of a multi-column metric; each keyword is a column."""
        if not kwargs:
            raise InvalidInput(f"log_row({name!r}) needs at least one column keyword")
        self.log_table(name, {k: [v] for k, v in kwargs.items()}, description or "")

    def log_table(self, name: str, value: Mapping[str, Iterable[Any]], description: str = "") -> None:
        """A dict of equal-length columns, appended as rows to the table `name`."""
        check_name(name, "table name")
        if not isinstance(value, Mapping) or not value:
            raise InvalidInput(f"log_table({name!r}) takes a non-empty dict of column -> list of values")
        columns: dict[str, list[Any]] = {}
        length = None
        for col, values in value.items():
            check_name(col, "column name")
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise InvalidInput(f"column {col!r} of table {name!r} must be a list of values")
            out = []
            for x in values:
                v = coerce_value(x, f"{name}.{col}")
                out.append(v if isinstance(v, str) or -_INF < v < _INF else None)
            if length is not None and len(out) != length:
                raise InvalidInput(f"columns of table {name!r} differ in length ({length} and {len(out)})")
            length = len(out)
            columns[col] = out
        if not length:
            raise InvalidInput(f"table {name!r} has no rows")
        with self._lock:
            row0 = self._table_rows.get(name, 0)
            self._table_rows[name] = row0 + length
        payload: dict[str, Any] = {"name": name, "row0": row0, "columns": columns}
        if description:
            payload["desc"] = str(description)
        self._enqueue("table", payload, 0)

    # --- text, tags, params ---
    def log_text(self, stream: str, line: str) -> None:
        """An output log line (stdout/stderr are captured the same way)."""
        check_name(stream, "log stream")
        if not isinstance(line, str):
            raise InvalidInput(f"log_text takes a string line, got {type(line).__name__}")
        now = _time()
        with self._lock:
            lines, times = self._logs.setdefault(stream, ([], []))
            for part in line.splitlines() or [""]:
                lines.append(part[:MAX_LOG_LINE])
                times.append(now)

    def tag(self, key: str, value: Any = None) -> None:
        """A string tag with an optional value."""
        check_name(key, "tag key")
        self._enqueue("tags", {"tags": {key: coerce_scalar_text(value, f"tag {key!r}")}})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._enqueue("tags", {"tags": {check_name(k, "tag key"): coerce_scalar_text(v, f"tag {k!r}") for k, v in tags.items()}})

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Hyper-parameters (strings or numbers), shown and filterable like tags."""
        self._enqueue("params", {"params": {check_name(k, "param name"): coerce_scalar_text(v, f"param {k!r}") for k, v in params.items()}})

    # --- files (bytes go to the api; the reference goes over Kafka) ---
    def upload_file(self, name: str, path_or_stream: str | os.PathLike[str] | IO[bytes]) -> None:
        from runstream.ingest.reader import upload_artifact

        check_name(name, "file name")
        if isinstance(path_or_stream, (str, os.PathLike)):
            data = Path(path_or_stream).read_bytes()
        else:
            data = path_or_stream.read()
        meta = upload_artifact(self.settings, self.project, self.id, name, data)
        self._files.append(name)
        self._enqueue(
            "file",
            {
                "path": name,
                "file_kind": meta.get("file_kind", "file"),
                "size": len(data),
                "uri": meta.get("uri", ""),
                "sha256": meta.get("sha256", ""),
                "content_type": meta.get("content_type", ""),
            },
        )

    def log_image(self, name: str, path: str | os.PathLike[str] | None = None, plot: Any = None, description: str = "") -> None:
        """An image file, or a matplotlib figure (or pyplot) rendered to PNG."""
        from runstream.ingest.reader import upload_artifact

        check_name(name, "image name")
        if (path is None) == (plot is None):
            raise InvalidInput("log_image takes exactly one of path= or plot=")
        if path is not None:
            data = Path(path).read_bytes()
            suffix = Path(path).suffix or ".png"
        else:
            import io

            buf = io.BytesIO()
            savefig = getattr(plot, "savefig", None)
            if savefig is None:
                raise InvalidInput("plot= must be a matplotlib figure or pyplot")
            savefig(buf, format="png")
            data = buf.getvalue()
            suffix = ".png"
        rel = f"images/{name}{suffix}"
        meta = upload_artifact(self.settings, self.project, self.id, rel, data)
        self._enqueue(
            "file",
            {
                "path": rel,
                "name": name,
                "file_kind": "image",
                "size": len(data),
                "uri": meta.get("uri", ""),
                "sha256": meta.get("sha256", ""),
                "content_type": meta.get("content_type", ""),
            },
        )

    # --- child runs and lifecycle ---
    def child_run(
        self, name: str | None = None, run_id: str | None = None, tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None
    ) -> Run:
        return Run(self.experiment, name=name, run_id=run_id, parent=self, tags=tags, params=params, shipper=self._shipper)

    def _end(self, status: str, error: str = "", timeout: float = 60.0) -> None:
        if self.status in TERMINAL_STATUSES:
            return
        if self._capturing:
            capture.stop(self)
        self.status = status
        self._enqueue("run_end", {"status": status, "error": error[:4096]})
        self._shipper.flush(timeout)
        self._shipper.unregister(self)

    def complete(self) -> None:
        """Mark the run Completed and deliver everything logged."""
        self._end("Completed")

    def fail(self, error: BaseException | str | None = None) -> None:
        self._end("Failed", "" if error is None else (error if isinstance(error, str) else f"{type(error).__name__}: {error}"))

    def cancel(self) -> None:
        self._end("Canceled")

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until everything logged so far is acknowledged by Kafka; False on timeout."""
        return self._shipper.flush(timeout)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.complete()
        elif isinstance(exc, KeyboardInterrupt):
            self.cancel()
        else:
            self.fail(exc)

    # --- reading back (through the api) ---
    def get_metrics(self, name: str | None = None, *, wait: float = 30.0) -> dict[str, Any]:
        """Every metric: a name logged once maps to its value, else to the list of values."""
        from runstream.ingest.reader import fetch_metrics

        return fetch_metrics(self, name=name, wait=wait)

    def get_file_names(self) -> list[str]:
        from runstream.ingest.reader import fetch_file_names

        return fetch_file_names(self)

    def get_portal_url(self) -> str:
        return f"{self.settings.api.rstrip('/')}/#/runs/{self.id}"

    def get_details(self) -> dict[str, Any]:
        from runstream.ingest.reader import fetch_run

        return fetch_run(self)

    def wait_for_completion(self, show_output: bool = False, *, poll: float = 0.5, timeout: float | None = None) -> dict[str, Any]:
        from runstream.ingest.reader import wait_for_completion

        return wait_for_completion(self, show_output=show_output, poll=poll, timeout=timeout)

    @property
    def events_sent(self) -> int:
        return self._seq

    # --- called by the shipper thread ---
    def _heartbeat(self) -> None:
        if self.status not in TERMINAL_STATUSES:
            self._enqueue("heartbeat", {})

    def _has_pending(self) -> bool:
        return bool(self._pending or self._buf.n or any(lines for lines, _ in self._logs.values()))

    def _seal(self) -> None:
        """Turn the open buffers into events (caller holds the lock)."""
        buf = self._buf
        if buf.n:
            self._buf = _MetricBuffer()
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

    def _take_events(self) -> list[tuple[dict[str, Any], int]]:
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

    def _acked(self, points: int) -> None:
        if points:
            with self._lock:
                self._buffered -= points

    def _requeue(self, events: list[tuple[dict[str, Any], int]]) -> None:
        with self._lock:
            self._pending[:0] = events
