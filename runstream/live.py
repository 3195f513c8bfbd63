"""The live update: what the processor publishes after each written batch and the api
pushes over /ws. Producer (processor.live) and consumers (api.live, the dashboard, the
notebook widget) agree on these shapes and nothing else.

On the live topic a message is a LiveBatch (JSON) with an ORIGIN_HEADER naming the
processor instance; an api hosted in the same process takes those updates in-process
and skips their copies. Over /ws the server sends LiveFrame messages: one update, or
several as {"type": "updates"}, plus the control frames of a subscription.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

ORIGIN_HEADER = "runstream-origin"  # Kafka header: the processor instance that published a live message

LIVE_POINTS_PER_METRIC = 64  # a slot with more points is truncated: the dashboard refetches the series
LIVE_TAIL_POINTS = 16  # the newest points a truncated slot still carries (sparklines, last values)
LIVE_LOG_LINES = 200  # log lines an update carries at most; beyond, `logs_truncated`


class MetricSlot(TypedDict):
    """A metric's new points in one update: steps `s`, values `v` (None for a non-finite
    value), `n` points in all (more than len(s) when truncated; a compact slot omits it
    when it is 1), the finite min/max."""

    s: list[int]
    v: list[float | None]
    n: NotRequired[int]
    min: NotRequired[float]
    max: NotRequired[float]
    truncated: NotRequired[bool]


class LogLine(TypedDict):
    stream: str
    line: str
    ts: float


class FileRef(TypedDict):
    path: str
    file_kind: str


class LiveUpdate(TypedDict):
    """One run's news from one batch. Only the keys with news are present."""

    type: Literal["update"]
    run: str
    project: str
    experiment: str
    server_time: NotRequired[float]
    status: NotRequired[str]
    metrics: NotRequired[dict[str, MetricSlot]]
    logs: NotRequired[list[LogLine]]
    logs_truncated: NotRequired[bool]
    tables: NotRequired[list[str]]
    files: NotRequired[list[FileRef]]
    meta: NotRequired[bool]  # tags, params or the run's start changed: re-read the run
    compact: NotRequired[bool]  # what a runs list needs: each slot holds only the newest point
    coalesced: NotRequired[bool]  # several updates merged for a subscriber that reads slowly


class LiveBatch(TypedDict):
    """A message on the live topic: the updates of one written batch."""

    type: Literal["batch"]
    updates: list[LiveUpdate]


class UpdatesFrame(TypedDict):
    """Several updates in one WebSocket frame."""

    type: Literal["updates"]
    updates: list[LiveUpdate]


def update_for(project: str, run: str, experiment: str) -> LiveUpdate:
    return {"type": "update", "run": run, "project": project, "experiment": experiment}
