"""The wire format: versioned JSON envelopes (orjson), one Kafka message each.

Every event is a JSON object with the envelope fields

    v        wire version (1)
    id       unique event id: "<writer session id>:<sequence>"; redelivery of an
             id that was already stored is ignored
    kind     one of KINDS
    run      run id (also the Kafka message key, so a run's events stay ordered)
    project  tenant
    ts       writer wall-clock time, seconds since the epoch

and a kind-specific payload, documented in docs/events.md. Metric points are
columnar: one `metrics` event carries many points as parallel arrays, so
throughput comes from batching rather than from more messages.

`validate` is the one gate used by the ingest gateway and the processor: it
raises WireError with a message a user can act on, and returns a
`runstream.events.ValidatedEvent` (the fields, normalised, and the columns as
numpy arrays for the writer), leaving the caller's dict as it was.
"""

from __future__ import annotations

import binascii
import math
import sys
from array import array
from base64 import b64encode
from typing import Any

import numpy as np
import orjson

from runstream.errors import InputError
from runstream.events import NO_FLOATS, NO_INTS, FloatColumn, IntColumn, ValidatedEvent

WIRE_VERSION = 1
MAX_NAME = 255
MAX_STRING_VALUE = 4096
MAX_POINTS_PER_EVENT = 100_000
MAX_LOG_LINE = 16_384
MAX_EVENT_BYTES = 8 * 1024 * 1024
RUN_STATUSES = ("NotStarted", "Queued", "Running", "Completed", "Failed", "Canceled")
TERMINAL_STATUSES = ("Completed", "Failed", "Canceled")
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# Timestamps (ts, t) are seconds since the epoch in [0, 2**32): before 2106-02-07, inside ClickHouse's DateTime64 range.
MAX_TS = float(2**32)
MAX_ROW = 2**53
INT64_MAX = 2**63 - 1

KINDS = (
    "run_start",  # experiment, name, parent, tags, params, status, meta (where it runs: ingest/metadata.py)
    "run_status",  # status, error
    "heartbeat",  # (envelope only)
    "run_end",  # status (terminal), error
    "metrics",  # names, m, s, x, t, sv, nf, desc
    "table",  # name, row0, columns, desc
    "tags",  # tags {key: value|null}; null removes the tag (docs/events.md)
    "params",  # params {key: scalar}
    "log",  # stream, lines, t
    "file",  # path, file_kind, size, content_type, uri, sha256
)


class WireError(InputError):
    """An event that does not match the wire schema; the message says why."""


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def decode(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_EVENT_BYTES:
        raise WireError(f"event of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("an event must be a JSON object")
    return obj


_GOOD_NAMES: set[str] = set()  # names already checked: the same few recur in every event


def check_name(name: object, what: str = "name") -> str:
    if name.__class__ is str and name in _GOOD_NAMES:
        return name  # type: ignore[return-value]
    if not isinstance(name, str):
        raise WireError(f"{what} must be a string, got {type(name).__name__}")
    if not name or not name.strip():
        raise WireError(f"{what} must not be empty")
    if len(name) > MAX_NAME:
        raise WireError(f"{what} is {len(name)} characters long; the limit is {MAX_NAME}")
    if "\x00" in name:
        raise WireError(f"{what} must not contain NUL characters")
    if name.__class__ is str:  # not a subclass, whose hash or equality could lie
        if len(_GOOD_NAMES) >= 100_000:
            _GOOD_NAMES.clear()
        _GOOD_NAMES.add(name)
    return name


def _str(event: dict[str, Any], key: str, *, required: bool = True, limit: int = MAX_NAME) -> str:
    value = event.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise WireError(f"'{key}' must be a string")
    if len(value) > limit:
        raise WireError(f"'{key}' is {len(value)} characters long; the limit is {limit}")
    return value


def _str_map(obj: object, what: str, *, allow_null: bool) -> dict[str, str | None]:
    if not isinstance(obj, dict):
        raise WireError(f"'{what}' must be an object")
    out: dict[str, str | None] = {}
    for key, value in obj.items():
        check_name(key, f"{what} key")
        if value is None and allow_null:
            out[key] = None
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            if isinstance(value, int) and not -INT64_MAX <= value <= 2 * INT64_MAX + 1:
                raise WireError(f"{what} '{key}' is an integer beyond the 64-bit range")
            if isinstance(value, float) and not math.isfinite(value):
                raise WireError(f"{what} '{key}' is not a finite number (JSON has no NaN); send it as a string")
            text = value if isinstance(value, str) else repr(value)
            if len(text) > MAX_STRING_VALUE:
                raise WireError(f"{what} '{key}' is longer than {MAX_STRING_VALUE} characters")
            out[key] = text
        else:
            raise WireError(f"{what} '{key}' must be a string or number, got {type(value).__name__}")
    return out


# A metrics column may instead be a string: base64 of the little-endian array of
# this dtype. The client sends that (no per-number text formatting or parsing);
# JSON arrays stay accepted for hand-written clients (docs/events.md).
PACKED_DTYPES: dict[str, np.dtype[Any]] = {"m": np.dtype("<i4"), "s": np.dtype("<i8"), "x": np.dtype("<f8"), "t": np.dtype("<f8")}


def pack(values: Any, column: str) -> str:
    """The packed (base64) form of a metrics column."""
    return b64encode(np.asarray(values, dtype=PACKED_DTYPES[column]).tobytes()).decode("ascii")


def _unpack(text: str, what: str) -> np.ndarray:
    dtype = PACKED_DTYPES[what]
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise WireError(f"'{what}' must be an array or a base64 string") from None
    if len(raw) % dtype.itemsize:
        raise WireError(f"packed '{what}' is {len(raw)} bytes, not a whole number of {dtype.itemsize}-byte items")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)  # native order for numpy and Arrow


def _numeric_array(values: object, what: str, n: int | None, *, integer: bool = False, checked: bool = False) -> np.ndarray:
    """checked: the caller checks the values (of a packed column) itself."""
    if isinstance(values, str) and what in PACKED_DTYPES:
        arr = _unpack(values, what)
        if n is not None and len(arr) != n:
            raise WireError(f"'{what}' has {len(arr)} items; expected {n}")
        if not integer and not checked and np.isinf(arr).any():
            raise WireError(f"'{what}' holds a non-finite number; send NaN and infinities through 'nf'")
        return arr.astype(np.int64, copy=False) if integer else arr
    if not isinstance(values, list):
        raise WireError(f"'{what}' must be an array")
    if n is not None and len(values) != n:
        raise WireError(f"'{what}' has {len(values)} items; expected {n}")
    if not values:
        return np.zeros(0, dtype=np.int64 if integer else np.float64)
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise WireError(f"'{what}' must be an array of numbers") from None
    if integer:
        if arr.dtype.kind not in "iu":
            raise WireError(f"'{what}' must be an array of integers")
        if arr.dtype.kind == "u" and int(arr.max()) > INT64_MAX:
            raise WireError(f"'{what}' holds an integer beyond the 64-bit signed range")
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind in "iuf":
        out = arr.astype(np.float64, copy=False)
        if np.isinf(out).any():
            raise WireError(f"'{what}' holds a non-finite number; send NaN and infinities through 'nf'")
        return out
    if arr.dtype.kind == "O":
        # null stands for "no numeric value here" (a string or non-finite value, see sv/nf)
        for x in values:
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
                raise WireError(f"'{what}' must contain numbers or null, found {type(x).__name__}")
        try:
            out = np.array([math.nan if x is None else float(x) for x in values], dtype=np.float64)
        except OverflowError:
            raise WireError(f"'{what}' holds a number beyond the float64 range") from None
        if np.isinf(out).any():
            raise WireError(f"'{what}' holds a non-finite number; send NaN and infinities through 'nf'")
        return out
    raise WireError(f"'{what}' must be an array of numbers")


def _times(event: dict[str, Any], n: int, source: dict[str, Any] | None = None) -> np.ndarray:
    """Per-item times `t` of `source` (the event by default; the envelope's ts when
    absent), each a valid timestamp."""
    raw = (event if source is None else source).get("t")
    if raw is None:
        return np.full(n, float(event["ts"]))
    t = _numeric_array(raw, "t", n)
    if len(t) and not (t.min() >= 0 and t.max() < MAX_TS):  # NaN fails both comparisons
        raise WireError("'t' must hold seconds since the epoch, from 0 up to 2**32 (no null)")
    return t


def _sparse(obj: object, what: str, n: int) -> list[tuple[int, str]]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise WireError(f"'{what}' must be an array of [index, string] pairs")
    out = []
    for item in obj:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int) or isinstance(item[0], bool) or not isinstance(item[1], str):
            raise WireError(f"'{what}' must be an array of [index, string] pairs")
        if not 0 <= item[0] < n:
            raise WireError(f"'{what}' index {item[0]} is out of range")
        if len(item[1]) > MAX_STRING_VALUE:
            raise WireError(f"a string value is longer than {MAX_STRING_VALUE} characters")
        out.append((item[0], item[1]))
    return out


def _metric_columns(event: dict[str, Any], names: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """The per-point columns m/s/x/t (with sv/nf): any value, one point per item."""
    m = _numeric_array(event.get("m"), "m", None, integer=True)
    n = len(m)
    if n and (m.min() < 0 or m.max() >= len(names)):
        raise WireError("'m' holds an index outside 'names'")
    if n > MAX_POINTS_PER_EVENT:
        raise WireError(f"{n} points in one event; the limit is {MAX_POINTS_PER_EVENT}")
    s = _numeric_array(event.get("s"), "s", n, integer=True)
    v = _numeric_array(event.get("x"), "x", n)
    t = _times(event, n)
    sv = _sparse(event.get("sv"), "sv", n)
    nf = _sparse(event.get("nf"), "nf", n)
    if nf and not v.flags.writeable:  # a packed column is a read-only view of the message
        v = v.copy()
    for i, token in nf:
        if token not in NONFINITE:
            raise WireError(f"'nf' token must be one of {sorted(NONFINITE)}, got {token!r}")
        v[i] = NONFINITE[token]
    if np.isnan(v).sum() > len(sv) + len(nf):
        raise WireError("'x' holds null where neither 'sv' nor 'nf' gives the value")
    return m, s, v, t, sv


def _metric_rows(event: dict[str, Any], names: list[Any], budget: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """`rows`: frames of the same metrics at many steps (what a training loop's log_metrics
    makes): per frame `m` [index into names] once, then per row a step `s` and a time `t`,
    and the values `x` row-major (len(s) * len(m) finite numbers). Expanded to per-point
    columns here, so the wire carries 8 bytes a point instead of 28."""
    rows = event["rows"]
    if not isinstance(rows, list) or not rows:
        raise WireError("'rows' must be a non-empty array of frames")
    out = []
    for frame in rows:
        if not isinstance(frame, dict):
            raise WireError("each frame in 'rows' must be an object with m, s, t and x")
        idxs = frame.get("m")
        if not isinstance(idxs, list) or not all(type(i) is int for i in idxs):
            raise WireError("a frame's 'm' must be an array of integers (indexes into 'names')")
        width = len(idxs)
        if not width:
            raise WireError("a frame's 'm' must name at least one metric")
        if min(idxs) < 0 or max(idxs) >= len(names):
            raise WireError("a frame's 'm' holds an index outside 'names'")
        if len(set(idxs)) != width:
            raise WireError("a frame's 'm' names a metric twice")
        fm = np.array(idxs, dtype=np.int64)
        fs = _numeric_array(frame.get("s"), "s", None, integer=True)
        k = len(fs)
        if not k:
            raise WireError("a frame must carry at least one row ('s' is empty)")
        if k * width > budget:
            raise WireError(f"more than {MAX_POINTS_PER_EVENT} points in one event")
        budget -= k * width
        fx = _numeric_array(frame.get("x"), "x", k * width, checked=True)
        if not np.isfinite(fx).all():
            raise WireError("a frame's 'x' must hold finite numbers; send other values through m/s/x with 'sv' or 'nf'")
        ft = _times(event, k, frame)
        out.append((np.tile(fm, k), np.repeat(fs, width), fx, np.repeat(ft, width)))
    return out


_Columns = tuple[IntColumn, IntColumn, FloatColumn, FloatColumn, list[tuple[int, str]]]  # m, s, v, t, sv of a metrics event

SMALL_EVENT_POINTS = 256  # up to this many points, packed events are checked without numpy (see _small_metrics)
# array typecodes of the packed dtypes; array uses native order, so the fast path needs a little-endian host
_ARRAY_CODES = {"m": "i", "s": "q", "x": "d", "t": "d"}
_FAST = sys.byteorder == "little" and all(array(code).itemsize == PACKED_DTYPES[c].itemsize for c, code in _ARRAY_CODES.items())


def _packed_list(text: object, what: str) -> list[Any] | None:
    if type(text) is not str:
        return None
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    values = array(_ARRAY_CODES[what])
    if len(raw) % values.itemsize:
        return None
    values.frombytes(raw)
    return values.tolist()


def _times_ok(t: list[float]) -> bool:
    return _finite(t) and min(t) >= 0 and max(t) < MAX_TS


def _finite(x: list[float]) -> bool:
    total = sum(x)
    return total - total == 0.0  # an inf or NaN anywhere makes the sum inf or NaN (an overflow only sends us to the slow path)


def _small_times(event: dict[str, Any], source: dict[str, Any], n: int) -> list[float] | None:
    """`source`'s packed times (the envelope's ts when absent), or None when not n valid ones."""
    if source.get("t") is None:
        return [float(event["ts"])] * n
    t = _packed_list(source["t"], "t")
    return t if t is not None and len(t) == n and _times_ok(t) else None


def _small_metrics(event: dict[str, Any], n_names: int) -> _Columns | None:
    """The points of a small event whose arrays are all packed (what the client sends), checked
    in plain Python: a live run's events hold a few points each, and numpy's per-call cost
    made these checks ~45 us an event. None when anything is unusual or wrong: the general
    path then validates the event and reports the error."""
    ms: list[int] = []
    ss: list[int] = []
    vs: list[float] = []
    ts: list[float] = []
    if event.get("m") is not None:
        if event.get("sv") or event.get("nf"):
            return None
        m, st, x = _packed_list(event["m"], "m"), _packed_list(event.get("s"), "s"), _packed_list(event.get("x"), "x")
        if m is None or st is None or x is None or not m or not len(m) == len(st) == len(x) or len(m) > SMALL_EVENT_POINTS:
            return None
        if min(m) < 0 or max(m) >= n_names or not _finite(x):
            return None
        t = _small_times(event, event, len(m))
        if t is None:
            return None
        ms, ss, vs, ts = m, st, x, t
    rows = event.get("rows")
    if rows is not None:
        if type(rows) is not list or not rows:
            return None
        for frame in rows:
            if type(frame) is not dict:
                return None
            idxs = frame.get("m")
            if type(idxs) is not list or not idxs or not all(type(i) is int for i in idxs):
                return None
            width = len(idxs)
            if min(idxs) < 0 or max(idxs) >= n_names or len(set(idxs)) != width:
                return None
            fs, fx = _packed_list(frame.get("s"), "s"), _packed_list(frame.get("x"), "x")
            if fs is None or fx is None or not fs or len(fx) != len(fs) * width or len(ms) + len(fx) > SMALL_EVENT_POINTS or not _finite(fx):
                return None
            ft = _small_times(event, frame, len(fs))
            if ft is None:
                return None
            ms += idxs * len(fs)
            for step, when in zip(fs, ft):
                ss += [step] * width
                ts += [when] * width
            vs += fx
    if not ms:
        return None
    return np.array(ms, dtype=np.int64), np.array(ss, dtype=np.int64), np.array(vs, dtype=np.float64), np.array(ts, dtype=np.float64), []


def _validate_metrics(event: dict[str, Any]) -> _Columns:
    """The columns m, s, v, t, sv of a metrics event (normalising its `desc`)."""
    names = event.get("names")
    if not isinstance(names, list) or not names:
        raise WireError("'names' must be a non-empty array of metric names")
    if len(names) > MAX_POINTS_PER_EVENT:
        raise WireError(f"{len(names)} metric names in one event; the limit is {MAX_POINTS_PER_EVENT}")
    for name in names:
        check_name(name, "metric name")
    small = _small_metrics(event, len(names)) if _FAST else None
    if small is not None:
        if "desc" in event:
            event["desc"] = _str_map(event["desc"], "desc", allow_null=False)
        return small
    has_rows = event.get("rows") is not None
    if has_rows and event.get("m") is None:
        m = s = np.zeros(0, dtype=np.int64)
        v = t = np.zeros(0, dtype=np.float64)
        sv: list[tuple[int, str]] = []
    else:
        m, s, v, t, sv = _metric_columns(event, names)
    if has_rows:
        # Columns first, then the frames: sv/nf positions refer to the columns.
        frames = _metric_rows(event, names, MAX_POINTS_PER_EVENT - len(m))
        m = np.concatenate([m, *(f[0] for f in frames)])
        s = np.concatenate([s, *(f[1] for f in frames)])
        v = np.concatenate([v, *(f[2] for f in frames)])
        t = np.concatenate([t, *(f[3] for f in frames)])
    if len(m) == 0:
        raise WireError("a metrics event must carry at least one point")
    if "desc" in event:
        event["desc"] = _str_map(event["desc"], "desc", allow_null=False)
    return m, s, v, t, sv


def _validate_table(event: dict[str, Any]) -> None:
    check_name(event.get("name"), "table name")
    row0 = event.get("row0", 0)
    if not isinstance(row0, int) or isinstance(row0, bool) or not 0 <= row0 < MAX_ROW:
        raise WireError("'row0' must be a non-negative integer below 2**53")
    columns = event.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise WireError("'columns' must be a non-empty object of column -> array")
    length = None
    for col, values in columns.items():
        check_name(col, "column name")
        if not isinstance(values, list):
            raise WireError(f"column '{col}' must be an array")
        if length is None:
            length = len(values)
        elif len(values) != length:
            raise WireError(f"column '{col}' has {len(values)} values; other columns have {length}")
        for x in values:
            if x is None or isinstance(x, (int, float, str)) and not isinstance(x, bool):
                if isinstance(x, str) and len(x) > MAX_STRING_VALUE:
                    raise WireError(f"a value in column '{col}' is too long")
                if isinstance(x, float) and not math.isfinite(x):
                    raise WireError(f"column '{col}' holds a non-finite number; tables take finite numbers, strings or null")
                if isinstance(x, int) and not -INT64_MAX <= x <= INT64_MAX:
                    raise WireError(f"column '{col}' holds an integer beyond the 64-bit range")
                continue
            raise WireError(f"column '{col}' holds a {type(x).__name__}; values must be numbers or strings")
    if not length:
        raise WireError("a table event must carry at least one row")
    if length * len(columns) > MAX_POINTS_PER_EVENT:
        raise WireError(f"{length * len(columns)} cells in one event; the limit is {MAX_POINTS_PER_EVENT}")


def _validate_log(event: dict[str, Any]) -> FloatColumn:
    """The time of each line of a log event (cutting its lines to MAX_LOG_LINE)."""
    stream = _str(event, "stream")
    if stream not in ("stdout", "stderr") and not stream:
        raise WireError("'stream' must be a non-empty string")
    lines = event.get("lines")
    if not isinstance(lines, list) or not lines:
        raise WireError("'lines' must be a non-empty array of strings")
    if len(lines) > MAX_POINTS_PER_EVENT:
        raise WireError(f"{len(lines)} lines in one event; the limit is {MAX_POINTS_PER_EVENT}")
    for line in lines:
        if not isinstance(line, str):
            raise WireError("'lines' must contain strings")
    event["lines"] = [line[:MAX_LOG_LINE] for line in lines]
    return _times(event, len(lines))


def _validate_file(event: dict[str, Any]) -> None:
    path = _str(event, "path", limit=1024)
    if not path or path.startswith("/") or ".." in path.split("/"):
        raise WireError("'path' must be a relative path without '..'")
    kind = event.get("file_kind", "file")
    if kind not in ("file", "image"):
        raise WireError("'file_kind' must be 'file' or 'image'")
    event["file_kind"] = kind
    size = event.get("size", 0)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= INT64_MAX:
        raise WireError("'size' must be a non-negative integer")
    for key in ("content_type", "uri", "sha256", "name"):
        _str(event, key, required=False, limit=2048)


# The kinds whose fields validation normalises (on a copy); the others keep the decoded dict as their fields.
_NORMALISED_KINDS = frozenset(("log", "file", "tags", "params", "run_start"))


def validate(decoded: dict[str, Any]) -> ValidatedEvent:
    """Check one decoded event; return its fields, normalised, and, for the writer, its columns.

    The caller's dict is never changed: an event whose fields need normalising gets
    a shallow copy (the payload's lists are only read, or replaced), the others
    hold the caller's dict itself, so neither should change it afterwards."""
    event = decoded
    if event.get("v") != WIRE_VERSION:
        raise WireError(f"unsupported wire version {event.get('v')!r}; this server speaks {WIRE_VERSION}")
    kind = event.get("kind")
    if kind not in KINDS:
        raise WireError(f"unknown event kind {kind!r}; expected one of {', '.join(KINDS)}")
    event_id = _str(event, "id", limit=128)
    if not event_id:
        raise WireError("'id' must not be empty")
    run = check_name(event.get("run"), "run id")
    project = check_name(event.get("project"), "project")
    ts = event.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not (0 <= ts < MAX_TS):
        raise WireError("'ts' must be a number of seconds since the epoch, from 0 up to 2**32")
    if kind in _NORMALISED_KINDS or (kind == "metrics" and "desc" in event):
        event = dict(event)
    if kind == "metrics":
        m, s, v, t, sv = _validate_metrics(event)
        return ValidatedEvent(event, kind, event_id, run, project, float(ts), m, s, v, t, sv)
    if kind == "log":
        return ValidatedEvent(event, kind, event_id, run, project, float(ts), NO_INTS, NO_INTS, NO_FLOATS, _validate_log(event), [])
    if kind == "table":
        _validate_table(event)
    elif kind == "file":
        _validate_file(event)
    elif kind == "tags":
        event["tags"] = _str_map(event.get("tags"), "tags", allow_null=True)
    elif kind == "params":
        event["params"] = _str_map(event.get("params"), "params", allow_null=False)
    elif kind == "run_start":
        check_name(event.get("experiment"), "experiment")
        _str(event, "name", required=False)
        _str(event, "parent", required=False)
        event["tags"] = _str_map(event.get("tags") or {}, "tags", allow_null=True)
        event["params"] = _str_map(event.get("params") or {}, "params", allow_null=False)
        event["meta"] = _str_map(event.get("meta") or {}, "meta", allow_null=False)
        status = event.get("status", "Running")
        if status not in RUN_STATUSES:
            raise WireError(f"'status' must be one of {', '.join(RUN_STATUSES)}")
        event["status"] = status
    elif kind in ("run_status", "run_end"):
        status = event.get("status")
        allowed = TERMINAL_STATUSES if kind == "run_end" else RUN_STATUSES
        if status not in allowed:
            raise WireError(f"'status' must be one of {', '.join(allowed)}")
        _str(event, "error", required=False, limit=MAX_STRING_VALUE)
    return ValidatedEvent(event, kind, event_id, run, project, float(ts))
