"""Run and Experiment: the logging API of the reference, over Kafka.

Logging calls validate their input, assign steps and metric indexes (the run's
name table), append to the run's buffer (ingest/buffer.py) and return; the
shipper thread drains the buffer and does all network work.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from runstream.config import Settings
from runstream.ingest import capture, lifecycle
from runstream.ingest.buffer import EVENT_POINTS as EVENT_POINTS  # re-exported: the bound on points per event
from runstream.ingest.buffer import ReadOnlyBuffer, ReadOnlyRun, RunBuffer
from runstream.ingest.metadata import run_metadata
from runstream.ingest.shipper import Shipper, get_shipper
from runstream.ingest.values import InvalidInput, check_name, coerce_scalar_text, coerce_value
from runstream.lifecycle import HEARTBEAT_META
from runstream.wire import MAX_LOG_LINE, MAX_STRING_VALUE, TERMINAL_STATUSES

if TYPE_CHECKING:
    from runstream.ingest.artifacts import FileSink, Uploads
    from runstream.ingest.submit import ScriptRunConfig, SubmittedRun

_INF = math.inf
# Steps are Int64 in storage; the last one logged must leave room for its successor.
_STEP_MIN, _STEP_MAX = -(2**63), 2**63 - 1
_time = time.time


def _has_uploads() -> bool:
    # Looked up, not imported: the uploader (and httpx) load on the first file, not with the client.
    artifacts = sys.modules.get("runstream.ingest.artifacts")
    uploads = getattr(artifacts, "_uploads", None)
    return uploads is not None and uploads.pending > 0


class _EndedSink:
    """The writer of a `file` event for a run of an earlier process (an adopted upload): one
    event on a buffer that takes no heartbeat."""

    def __init__(self, buffer: RunBuffer, shipper: Shipper) -> None:
        self.buffer = buffer
        shipper.register(buffer)
        shipper.unregister(buffer)  # known to the shipper while it lives, never heartbeated

    def enqueue(self, kind: str, payload: dict[str, Any], *, last: bool = False) -> None:
        self.buffer.enqueue(kind, payload, last=True)


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
        """Start an interactive run; end it with complete(), or use it as a context manager
        (left open, it ends with the process: ingest/lifecycle.py).

        capture_output: tee this process's stdout/stderr into the run's output log
        (default on, unless RUNSTREAM_CAPTURE_OUTPUT=0)."""
        if capture_output is None:
            capture_output = os.environ.get("RUNSTREAM_CAPTURE_OUTPUT", "1") != "0"
        return Run(self, name=name, tags=tags, params=params, new_id=run_id, capture_output=capture_output)

    def submit(
        self, config: ScriptRunConfig, *, name: str | None = None, tags: Mapping[str, Any] | None = None, run_id: str | None = None
    ) -> SubmittedRun:
        """Run a script as a new run (ingest/submit.py): returns at once, the run Queued, then
        Running, then Completed, Failed or Canceled from the script's exit code."""
        from runstream.ingest.submit import submit

        return submit(self, config, name=name, tags=tags, run_id=run_id)

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r}, project={self.project!r})"


class Run:
    """One execution of a training script; every logging call is non-blocking.

    `Run(experiment, run_id)` (or `Run.from_id(run_id)`) is a read-only handle on an
    existing run: it reads and watches through the api and sends nothing. Runs that log
    come from `Experiment.start_logging`, `Run.get_context`, `child_run` or
    `Experiment.submit`."""

    def __init__(
        self,
        experiment: Experiment,
        run_id: str | None = None,
        /,
        *,
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        new_id: str | None = None,
        parent: Run | None = None,
        attach: bool = False,
        shipper: Shipper | None = None,
        capture_output: bool = False,
        status: str = "Running",
        meta: Mapping[str, str] | None = None,
    ) -> None:
        self.experiment = experiment
        self.settings = experiment.settings
        self.project = experiment.project
        self.parent = parent
        # The name table and the table row counters; appended points take the buffer's own lock.
        self._lock = threading.Lock()
        self._names: list[str] = []  # by metric index; the buffer reads it when it seals
        self._name_idx: dict[str, int] = {}
        self._key_cache: dict[tuple[str, ...], list[int]] = {}  # log_metrics name sets seen before
        self._next_step: list[int] = []
        self._table_rows: dict[str, int] = {}
        self._capturing = False
        # What a writer knows of its times (a handle asks the api).
        self._started_at: float = time.time()
        self._ended_at: float | None = None
        self.readonly = run_id is not None
        if run_id is not None:
            self.id = self.name = check_name(run_id, "run id")
            self._status = "Unknown"
            self._buffer: RunBuffer | ReadOnlyBuffer = ReadOnlyBuffer(self.id)
            return
        self.id = check_name(new_id, "run id") if new_id else f"{uuid.uuid4().hex[:20]}"
        self.name = check_name(name, "run name") if name else self.id
        self._status = status
        self._shipper = shipper or get_shipper(self.settings)
        self._buffer = RunBuffer(self.id, self.project, self._names, self._shipper)
        self._shipper.register(self._buffer)
        start_meta = dict(meta if meta is not None else run_metadata())
        heartbeat = getattr(self._shipper, "heartbeat_s", None)
        if heartbeat:  # this writer heartbeats: readers may show it Crashed when they stop (runstream.lifecycle)
            start_meta[HEARTBEAT_META] = f"{heartbeat:g}"
        start: dict[str, Any] = {"experiment": experiment.name, "status": status, "meta": start_meta}
        if not attach:
            # An attached context (RUNSTREAM_RUN_ID) names nothing: its start may repeat one
            # made elsewhere, and must not rename the run or reset its tags.
            start["name"] = self.name
            start["tags"] = {check_name(k, "tag key"): coerce_scalar_text(v, f"tag {k!r}") for k, v in (tags or {}).items()}
            start["params"] = {check_name(k, "param name"): coerce_scalar_text(v, f"param {k!r}") for k, v in (params or {}).items()}
        if parent is not None:
            start["parent"] = parent.id
        self._buffer.enqueue("run_start", start)
        self._capturing = capture_output and capture.start(self)
        # The context of a submitted script: its supervisor reports the end from the exit code.
        self._supervised = attach and os.environ.get("RUNSTREAM_SUBMITTED") == "1"
        lifecycle.track(self)

    # --- identity ---
    @classmethod
    def get_context(cls, *, settings: Settings | None = None) -> Run:
        """The run of a submitted script (RUNSTREAM_RUN_ID), else a new interactive run."""
        settings = settings or Settings()
        experiment = Experiment(os.environ.get("RUNSTREAM_EXPERIMENT", "Default"), settings=settings)
        capture_output = os.environ.get("RUNSTREAM_CAPTURE_OUTPUT", "1") != "0"
        if settings.run_id:
            return cls(experiment, new_id=settings.run_id, attach=True, capture_output=capture_output)
        return cls(experiment, capture_output=capture_output)

    @classmethod
    def from_id(cls, run_id: str, *, settings: Settings | None = None, project: str | None = None) -> Run:
        """A read-only handle on run `run_id`, its experiment read from the api."""
        from runstream.ingest.reader import fetch_run_by_id

        settings = settings or Settings()
        details = fetch_run_by_id(settings, run_id)
        run = cls(Experiment(details["experiment"], project or details["project"], settings=settings), run_id)
        run._seen(details)
        return run

    @property
    def status(self) -> str:
        """The run's status; a read-only handle asks the api (the last answer if it is away)."""
        if self.readonly:
            try:
                self.get_details()
            except Exception:
                pass
        return self._status

    def _seen(self, details: Mapping[str, Any]) -> None:
        if self.readonly:
            self._status = str(details.get("status", self._status))
            self.name = str(details.get("name") or self.name)

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, name={self.name!r}, experiment={self.experiment.name!r}, status={self._status!r})"

    def _repr_html_(self) -> str:
        """A notebook cell showing the run: experiment, id, name, status, duration and a link
        to its page (the reference's run table)."""
        from html import escape

        start, end = self._started_at, self._ended_at
        if self.readonly:
            try:
                details = self.get_details()
                start, end = details.get("created_at") or 0.0, details.get("ended_at")
            except Exception:  # the api is away: what the handle knows
                pass
        seconds = max(0.0, (end or time.time()) - start) if start else None
        duration = "" if seconds is None else f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{seconds % 60:04.1f}"
        url = self.get_portal_url()
        cells = [self.experiment.name, self.id, self.name, self._status, duration]
        head = "".join(f"<th>{h}</th>" for h in ("Experiment", "Id", "Name", "Status", "Duration", "Details page"))
        row = "".join(f"<td>{escape(str(c))}</td>" for c in cells)
        link = f'<td><a href="{escape(url, quote=True)}" target="_blank" rel="noopener">Link to the run page</a></td>'
        return f'<table class="runstream-run"><tr>{head}</tr><tr>{row}{link}</tr></table>'

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
            self._buffer.describe(name, str(description))
        return idx

    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        """Log a value; logging the same name again appends (the metric becomes a vector)."""
        idx = self._name_idx.get(name)
        if idx is None:
            idx = self._register(name, description)
        elif description:
            self._buffer.describe(name, str(description))
        if type(value) is not float or not -_INF < value < _INF:
            value = coerce_value(value, name)
        if step is None:
            step = self._next_step[idx]
        elif type(step) is not int or not _STEP_MIN <= step < _STEP_MAX:
            step = self._check_step(step)
        self._next_step[idx] = step + 1
        self._buffer.add_point(idx, step, value)

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
                # A float sum (one C call, cheaper than a type check per value) means
                # floats, ints and bools: what the general path would coerce to these same
                # floats. Its finiteness means every value is finite. Numpy scalars make a
                # numpy sum and take the general path.
                if type(total) is float and total - total == 0.0:
                    if self._buffer.add_row(idxs, step, values, _time()):
                        step += 1
                        next_step = self._next_step
                        for idx in idxs:
                            next_step[idx] = step
                    return
        self._log_metrics_general(metrics, step, description)

    def _log_metrics_general(self, metrics: Mapping[str, Any], step: int | None, description: str) -> None:
        if not isinstance(metrics, Mapping):
            raise InvalidInput(f"log_metrics takes a mapping of name -> value, got {type(metrics).__name__}")
        name_idx = self._name_idx
        idxs: list[int] = []
        values: list[float | str] = []
        for name, value in metrics.items():
            idx = name_idx.get(name)
            if idx is None:
                idx = self._register(name, description)
            if type(value) is not float or not -_INF < value < _INF:
                value = coerce_value(value, name)
            idxs.append(idx)
            values.append(value)
        if type(metrics) is dict and len(self._key_cache) < 1024:
            self._key_cache[tuple(metrics)] = idxs
        next_step = self._next_step
        steps = [next_step[idx] for idx in idxs] if step is None else [self._check_step(step)] * len(idxs)
        if self._buffer.add_points(idxs, steps, values, _time()):
            for idx, s in zip(idxs, steps):
                next_step[idx] = s + 1

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
        start = self._next_step[idx]
        if self._buffer.add_points([idx] * len(values), list(range(start, start + len(values))), values, _time()):
            self._next_step[idx] = start + len(values)

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
        self._buffer.enqueue("table", payload)

    # --- text, tags, params ---
    def log_text(self, stream: str, line: str) -> None:
        """An output log line (stdout/stderr are captured the same way)."""
        check_name(stream, "log stream")
        if not isinstance(line, str):
            raise InvalidInput(f"log_text takes a string line, got {type(line).__name__}")
        self._buffer.add_lines(stream, [part[:MAX_LOG_LINE] for part in line.splitlines() or [""]], _time())

    def tag(self, key: str, value: Any = None) -> None:
        """A string tag with an optional value."""
        check_name(key, "tag key")
        self._buffer.enqueue("tags", {"tags": {key: coerce_scalar_text(value, f"tag {key!r}")}})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._buffer.enqueue("tags", {"tags": {check_name(k, "tag key"): coerce_scalar_text(v, f"tag {k!r}") for k, v in tags.items()}})

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Hyper-parameters (strings or numbers), shown and filterable like tags."""
        self._buffer.enqueue("params", {"params": {check_name(k, "param name"): coerce_scalar_text(v, f"param {k!r}") for k, v in params.items()}})

    # --- files: spooled on local disk, uploaded to the api in the background (ingest/artifacts.py) ---
    def _uploads(self) -> Uploads:
        from runstream.ingest.artifacts import get_uploads

        shipper = self._shipper

        def sink_for(run_id: str, project: str) -> FileSink:
            return _EndedSink(RunBuffer(run_id, project, [], shipper), shipper)

        return get_uploads(self.settings, sink_factory=sink_for, flush_events=shipper.flush)

    def upload_file(self, name: str, path_or_stream: str | os.PathLike[str] | IO[bytes]) -> None:
        """Attach a file (a path or a binary stream) as `name`; returns once it is on local disk."""
        check_name(name, "file name")
        self._writer()
        if isinstance(path_or_stream, (str, os.PathLike)) and not Path(path_or_stream).is_file():
            raise InvalidInput(f"upload_file({name!r}): {str(path_or_stream)!r} is not a file")
        self._uploads().add(self.project, self.id, name, path_or_stream, self._buffer)

    def upload_folder(self, name: str, path: str | os.PathLike[str]) -> list[str]:
        """Attach every file under the folder `path` as `name/<relative path>`; the names."""
        check_name(name, "folder name")
        folder = Path(path)
        if not folder.is_dir():
            raise InvalidInput(f"upload_folder({name!r}): {str(path)!r} is not a folder")
        names = []
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            names.append(f"{name.rstrip('/')}/{file.relative_to(folder).as_posix()}")
            self.upload_file(names[-1], file)
        return names

    def log_image(self, name: str, path: str | os.PathLike[str] | None = None, plot: Any = None, description: str = "") -> None:
        """An image file, or a matplotlib figure (or pyplot) rendered to PNG."""
        check_name(name, "image name")
        self._writer()
        if (path is None) == (plot is None):
            raise InvalidInput("log_image takes exactly one of path= or plot=")
        source: str | os.PathLike[str] | bytes
        if path is not None:
            if not Path(path).is_file():
                raise InvalidInput(f"log_image({name!r}): {str(path)!r} is not a file")
            source, suffix = path, Path(path).suffix or ".png"
        else:
            import io

            buf = io.BytesIO()
            savefig = getattr(plot, "savefig", None)
            if savefig is None:
                raise InvalidInput("plot= must be a matplotlib figure or pyplot")
            savefig(buf, format="png")
            source, suffix = buf.getvalue(), ".png"
        self._uploads().add(self.project, self.id, f"images/{name}{suffix}", source, self._buffer, file_kind="image", name=name)

    # --- child runs and lifecycle ---
    def child_run(
        self, name: str | None = None, run_id: str | None = None, tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None
    ) -> Run:
        self._writer()
        return Run(self.experiment, name=name, new_id=run_id, parent=self, tags=tags, params=params, shipper=self._shipper)

    def _writer(self) -> None:
        if self.readonly:
            raise ReadOnlyRun(f"run {self.id!r} is a read-only handle (Run(experiment, run_id)); it cannot log or end the run")

    def _end(self, status: str, error: str = "", timeout: float | None = 60.0) -> None:
        self._writer()
        if self._status in TERMINAL_STATUSES:
            return
        if _has_uploads():  # the end follows the run's files, so an ended run lists them all
            self._uploads().flush(timeout)
        self._close(status, error)
        if timeout is not None:
            self._shipper.flush(timeout)

    def _close(self, status: str, error: str) -> None:
        """Queue the end: after it the buffer takes no heartbeat and the exit hook lets the run be."""
        lifecycle.untrack(self)
        if self._capturing:
            capture.stop(self)
        self._status, self._ended_at = status, time.time()
        buffer = self._buffer
        assert isinstance(buffer, RunBuffer)  # _writer() refused a read-only handle
        buffer.enqueue("run_end", {"status": status, "error": error[:MAX_STRING_VALUE]}, last=True)
        self._shipper.unregister(buffer)

    def end_at_exit(self, status: str, error: str) -> None:
        """The process is ending with the run open (ingest/lifecycle.py): queue its end,
        unless a supervisor ends it (a submitted script's context: ingest/submit.py)."""
        if self._status not in TERMINAL_STATUSES and not self._supervised:
            self._close(status, error)

    def complete(self) -> None:
        """Mark the run Completed and deliver everything logged."""
        self._end("Completed")

    def fail(self, error: BaseException | str | None = None) -> None:
        """Mark the run Failed; an exception is recorded with its traceback."""
        self._end("Failed", "" if error is None else (error if isinstance(error, str) else lifecycle.format_error(error)))

    def cancel(self) -> None:
        self._end("Canceled")

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every file added so far is uploaded and everything logged is
        acknowledged by Kafka; False on timeout."""
        if self.readonly:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        uploaded = self._uploads().flush(timeout) if _has_uploads() else True
        rest = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._shipper.flush(rest) and uploaded

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.complete()
        elif isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (ingest/lifecycle.py)
            self._end("Canceled", "Terminated by SIGTERM" if lifecycle.terminated() else "KeyboardInterrupt")
        else:
            self.fail(exc)

    # --- reading back (through the api) ---
    def get_metrics(self, name: str | None = None, *, wait: float = 30.0) -> dict[str, Any]:
        """Every metric: a name logged once maps to its value, else to the list of values."""
        from runstream.ingest.reader import fetch_metrics

        return fetch_metrics(self, name=name, wait=wait)

    def get_children(self) -> list[Run]:
        """Read-only handles on the run's child runs, oldest first."""
        from runstream.ingest.reader import fetch_children

        handles = []
        for row in fetch_children(self):
            child = Run(self.experiment, row["id"])
            child._seen(row)
            handles.append(child)
        return handles

    def download_file(self, name: str, output_file_path: str | os.PathLike[str] | None = None) -> Path:
        """Save the run's file `name` to `output_file_path` (default: its name's last part, here)."""
        from runstream.ingest.reader import download_file

        target = Path(output_file_path) if output_file_path is not None else Path(Path(name).name)
        download_file(self, name, target)
        return target

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
        """Events this run has made so far (every kind, heartbeats included)."""
        return self._buffer.events
