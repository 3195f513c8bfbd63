"""Fuzzing the edge: the decoder and the gateway never crash and never answer 5xx."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstream.wire import KINDS, WireError, decode, encode, validate
from tests.conftest import Stack

# The session stack's Kafka clients use `random` in their own thread while hypothesis generates examples.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)), max_leaves=20
)
KEYS = [
    "v",
    "id",
    "kind",
    "run",
    "project",
    "ts",
    "names",
    "m",
    "s",
    "x",
    "t",
    "sv",
    "nf",
    "desc",
    "name",
    "row0",
    "columns",
    "tags",
    "params",
    "stream",
    "lines",
    "path",
    "file_kind",
    "size",
    "experiment",
    "status",
]


@st.composite
def near_events(draw: Any) -> dict[str, Any]:
    """Mostly-valid envelopes with random payload fields: reaches deep into validate()."""
    event: dict[str, Any] = {"v": 1, "id": "f:1", "kind": draw(st.sampled_from(KINDS)), "run": "r", "project": "p", "ts": 1.0}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=8)):
        event[key] = draw(json_values)
    if draw(st.booleans()):
        n = draw(st.integers(0, 5))
        event.update(
            {
                "names": ["a", "b"],
                "m": draw(st.lists(st.integers(-1, 2), min_size=n, max_size=n)),
                "s": list(range(n)),
                "x": draw(st.lists(json_scalars, min_size=n, max_size=n)),
            }
        )
    return event


@settings(max_examples=400, deadline=None, database=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(orjson.dumps), near_events().map(orjson.dumps)))
def test_decoder_raises_only_wire_errors(raw: bytes) -> None:
    try:
        event = validate(decode(raw))
    except WireError as exc:
        assert str(exc)
        return
    if event.kind == "metrics":
        assert len(event.m) == len(event.s) == len(event.v) == len(event.t)
        assert all(math.isfinite(x) or math.isnan(x) or math.isinf(x) for x in event.v)


# Python-side values a caller of validate() may hold, and that stdlib json writes: big integers, NaN and
# infinities (as NaN/Infinity literals), lone surrogates (as \ud800 escapes).
wild_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(alphabet=st.characters(codec=None), max_size=10)
)
wild_values = st.recursive(
    wild_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)), max_leaves=20
)


NASTY = [
    math.inf,
    -math.inf,
    math.nan,
    1e300,
    -1e300,
    -1,
    2**32,
    2**53,
    2**63,
    2**64 - 1,
    2**70,
    -(2**63) - 1,
    "\ud800",
    "x" * 300,
    "",
    None,
    True,
    1.5,
]


def valid_event(kind: str) -> dict[str, Any]:
    event: dict[str, Any] = {"v": 1, "id": "f:1", "kind": kind, "run": "r", "project": "p", "ts": 1.7e9}
    payloads: dict[str, dict[str, Any]] = {
        "run_start": {"experiment": "e", "name": "n", "parent": "q", "tags": {"a": "b"}, "params": {"lr": 0.1}},
        "run_status": {"status": "Running"},
        "run_end": {"status": "Failed", "error": "boom"},
        "heartbeat": {},
        "metrics": {
            "names": ["a", "b"],
            "m": [0, 1, 0],
            "s": [0, 0, 1],
            "x": [0.5, None, 2],
            "t": [1.7e9] * 3,
            "sv": [[1, "s"]],
            "desc": {"a": "d"},
        },
        "table": {"name": "t", "row0": 0, "columns": {"x": [1, 2], "y": [0.5, "s"]}},
        "tags": {"tags": {"a": "b", "c": None}},
        "params": {"params": {"a": 1}},
        "log": {"stream": "stdout", "lines": ["a", "b"], "t": [1.7e9, 1.7e9]},
        "file": {"path": "a/b.png", "file_kind": "image", "size": 3, "content_type": "image/png", "uri": "file:///x", "sha256": "00"},
    }
    event.update(payloads[kind])
    return event


@st.composite
def wild_events(draw: Any) -> dict[str, Any]:
    """A valid event of each kind with one field, or one item inside a field, replaced by a nasty value."""
    event = valid_event(draw(st.sampled_from(KINDS)))
    for _ in range(draw(st.integers(1, 2))):
        key = draw(st.sampled_from(sorted(event)))
        value, nasty = event[key], draw(st.one_of(st.sampled_from(NASTY), wild_values))
        if isinstance(value, list) and value and draw(st.booleans()):
            value = list(value)
            value[draw(st.integers(0, len(value) - 1))] = nasty
        elif isinstance(value, dict) and value and draw(st.booleans()):
            value = {**value, draw(st.sampled_from(sorted(value))): nasty}
        else:
            value = nasty
        event[key] = value
    return event


@settings(max_examples=400, deadline=None, database=None)
@given(wild_events())
def test_validate_of_python_values_raises_only_wire_errors(event: dict[str, Any]) -> None:
    original = copy.deepcopy(event)
    try:
        got = validate(event)
    except WireError:
        assert event == original
        return
    assert event == original  # the caller's dict is left as it was (NaN: deepcopy keeps the same float object)
    # What passes can be stored: the processor turns every time into a DateTime64.
    assert 0 <= got.ts < 2**32
    assert ((got.t >= 0) & (got.t < 2**32)).all()
    try:
        raw = encode(original)
    except orjson.JSONEncodeError:
        return  # not representable in JSON at all: the gateway answers 422 (it cannot arrive from Kafka)
    validate(decode(raw))  # and once sent it passes again: no infinity silently turned into null


@settings(max_examples=300, deadline=None, database=None)
@given(wild_events().map(lambda e: json.dumps(e).encode()))
def test_decoder_takes_any_json_text(raw: bytes) -> None:
    try:
        validate(decode(raw))
    except WireError:
        pass


@pytest.mark.one_engine  # the subject is the gateway's validation, before storage
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=100),
        json_values.map(orjson.dumps),
        st.lists(st.one_of(near_events(), json_values), max_size=4).map(lambda evs: orjson.dumps({"events": evs})),
        st.lists(wild_events(), min_size=1, max_size=3).map(lambda evs: json.dumps({"events": evs}).encode()),
    )
)
def test_gateway_never_answers_5xx(stack: Stack, body: bytes) -> None:
    # The session stack's real server: a valid batch is produced to the real broker (202).
    response = httpx.post(f"{stack.api_url}/api/v1/events", content=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["detail"]


# Mostly ordinary values, so that many events are valid; now and then one that is not.
special_floats = st.one_of(*[st.floats(0, 1e6)] * 6, st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 2.0**32, 1.7e308]))
indexes = st.one_of(*[st.integers(0, 2)] * 12, st.sampled_from([-1, 3]))
extra = st.one_of(*[st.just(0)] * 8, st.just(1))


@st.composite
def small_packed_events(draw: Any) -> dict[str, Any]:
    """What the client sends for a live run (a packed column and packed frames), with edge
    values mixed in: the small-event fast path and the numpy path must agree on each."""
    from runstream.wire import pack

    names = ["a", "b", "c"]
    event: dict[str, Any] = {"v": 1, "id": "p:1", "kind": "metrics", "run": "r", "project": "p", "ts": 5.0, "names": names}
    if draw(st.booleans()):
        n = draw(st.sampled_from([1, 1, 2, 4, 0]))
        event["m"] = pack(draw(st.lists(indexes, min_size=n, max_size=n)), "m")
        event["s"] = pack(draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n + draw(extra))), "s")
        event["x"] = pack(draw(st.lists(special_floats, min_size=n, max_size=n)), "x")
        if draw(st.booleans()):
            event["t"] = pack(draw(st.lists(special_floats, min_size=n, max_size=n)), "t")
        if draw(st.integers(0, 9)) == 0:
            event["nf"] = [[0, "nan"]]
    if draw(st.booleans()) or "m" not in event:
        frames = []
        for _ in range(draw(st.sampled_from([1, 1, 2, 0]))):
            idxs = draw(
                st.lists(indexes, min_size=draw(st.sampled_from([1, 1, 1, 0])), max_size=3, unique=draw(st.sampled_from([True] * 5 + [False])))
            )
            k = draw(st.sampled_from([1, 1, 2, 3, 0]))
            frame: dict[str, Any] = {"m": idxs, "s": pack(list(range(k)), "s")}
            frame["x"] = pack(draw(st.lists(special_floats, min_size=k * len(idxs), max_size=k * len(idxs) + draw(extra))), "x")
            if draw(st.booleans()):
                frame["t"] = pack(draw(st.lists(special_floats, min_size=k, max_size=k)), "t")
            frames.append(frame)
        event["rows"] = frames
    return event


@settings(max_examples=600, deadline=None, database=None)
@given(small_packed_events())
def test_the_small_event_fast_path_agrees_with_the_numpy_path(event: dict[str, Any]) -> None:
    from runstream import wire

    def outcome(fast: bool) -> Any:
        saved = wire._FAST
        wire._FAST = fast
        try:
            got = validate(copy.deepcopy(event))
        except WireError:
            return "error"  # the fast path never raises its own errors: any error comes from the numpy path
        finally:
            wire._FAST = saved
        return [got.m.tolist(), got.s.tolist(), got.v.tolist(), got.t.tolist(), got.sv]

    fast, slow = outcome(True), outcome(False)
    assert repr(fast) == repr(slow)  # repr: NaN == NaN
