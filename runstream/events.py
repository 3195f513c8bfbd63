"""The validated event: what `runstream.wire.validate` hands the processor and the gateway.

A `ValidatedEvent` holds the envelope fields as typed attributes, the decoded
event as `fields` (a copy with the payload normalised; the caller's dict is not
changed), and, for metrics and log events, the columns the writer takes as numpy
arrays. The arrays are the ones validation built, never copies: an event's
points are read on the processor's hot path, and a packed column may be a
read-only view of the message bytes, so no consumer writes to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

IntColumn = npt.NDArray[np.int64]
FloatColumn = npt.NDArray[np.float64]


def _empty(dtype: type[np.generic]) -> Any:
    arr = np.zeros(0, dtype=dtype)
    arr.flags.writeable = False  # shared by every event without that column
    return arr


NO_INTS: IntColumn = _empty(np.int64)
NO_FLOATS: FloatColumn = _empty(np.float64)


# Factories, not defaults: a dataclass refuses an unhashable default (an array).
def _no_ints() -> IntColumn:
    return NO_INTS


def _no_floats() -> FloatColumn:
    return NO_FLOATS


@dataclass(slots=True, eq=False)
class ValidatedEvent:
    """One event that passed the wire schema (docs/events.md).

    `fields` is every field of the event, as decoded, with these normalised:
    `tags`, `params` and `desc` as strings, `lines` cut to the line limit,
    `status` and `file_kind` with their defaults. The columns:

    - metrics: one item per point, `m` the index into `fields["names"]`, `s` the
      step, `v` the value (NaN or an infinity where `sv` or `nf` gave it), `t` the
      time in seconds since the epoch; `sv` the (point, string) values;
    - log: `t`, the time of each line of `fields["lines"]`;
    - other kinds: all empty.
    """

    fields: dict[str, Any]
    kind: str
    id: str
    run: str
    project: str
    ts: float
    m: IntColumn = field(default_factory=_no_ints)
    s: IntColumn = field(default_factory=_no_ints)
    v: FloatColumn = field(default_factory=_no_floats)
    t: FloatColumn = field(default_factory=_no_floats)
    sv: list[tuple[int, str]] = field(default_factory=list)
