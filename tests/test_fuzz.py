"""Fuzzing the edge: the decoder and the gateway never crash and never answer 5xx."""

from __future__ import annotations

import math
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstream.wire import KINDS, WireError, decode, validate
from tests.conftest import Stack

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


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(orjson.dumps), near_events().map(orjson.dumps)))
def test_decoder_raises_only_wire_errors(raw: bytes) -> None:
    try:
        event = validate(decode(raw))
    except WireError as exc:
        assert str(exc)
        return
    if event["kind"] == "metrics":
        assert len(event["_m"]) == len(event["_s"]) == len(event["_v"])
        assert all(math.isfinite(x) or math.isnan(x) or math.isinf(x) for x in event["_v"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, st.builds(lambda evs: {"events": evs}, st.lists(st.one_of(near_events(), json_values), max_size=4))))
def test_gateway_never_answers_5xx(stack: Stack, body: Any) -> None:
    # The session stack's real server: a valid batch is produced to the real broker (202).
    response = httpx.post(f"{stack.api_url}/api/v1/events", content=orjson.dumps(body), headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["detail"]
