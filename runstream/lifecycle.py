"""The one rule for a run whose process vanished: `Crashed`, derived, never stored.

A run that is Running (or Queued), whose writer promised heartbeats (its start's
`meta` has `heartbeat_s`: runstream's client does, an MLflow client or a bare
gateway post does not) and that has sent nothing for `crash_after_s()` seconds
(RUNSTREAM_CRASH_AFTER_S, default 120) is shown as Crashed; as soon as its
heartbeats resume its stored status shows again. The stored status is
left alone because only the run's own process knows how it ended: a stalled
network or a stopped process may come back.

Every reader takes the shown status from `status_sql`: the api's run reads and
filters, the /ws snapshots and the hub's sweep that pushes the change (nothing
arrives from a dead process, so the api must notice it), and through those the
dashboard and the client. The processor persists `last_seen` often enough for
the rule (`last_seen_resolution_s`).
"""

from __future__ import annotations

import os

CRASH_AFTER_S = 120.0
CRASHED = "Crashed"
# Statuses of a run that is expected to send heartbeats (a Queued run's submitter does).
LIVE_STATUSES = ("Running", "Queued")
# The status filters and badges accept these besides the stored ones (runstream.wire.RUN_STATUSES).
SHOWN_ONLY_STATUSES = (CRASHED,)


def crash_after_s() -> float:
    """Seconds without events after which a live run is shown as Crashed; read each time so
    that a test (or an operator) can change it without restarting the api."""
    try:
        value = float(os.environ.get("RUNSTREAM_CRASH_AFTER_S", "") or CRASH_AFTER_S)
    except ValueError:
        return CRASH_AFTER_S
    return value if value > 0 else CRASH_AFTER_S


def last_seen_resolution_s(crash_after: float | None = None) -> float:
    """How stale a persisted last_seen may be: well inside the crash threshold, so a live
    run between two persisted rows is never shown Crashed (at most 30 s, the old cadence)."""
    return min(30.0, (crash_after or crash_after_s()) / 4)


HEARTBEAT_META = "heartbeat_s"  # the meta key of a writer that heartbeats, and how often


def status_sql(crash_after: float | None = None) -> str:
    """The shown status as a ClickHouse expression over the runs columns `status`,
    `last_seen` and `meta`. Only a number of our own is formatted into the SQL."""
    ms = int((crash_after or crash_after_s()) * 1000)
    live = ", ".join(f"'{s}'" for s in LIVE_STATUSES)
    stale = f"toUnixTimestamp64Milli(last_seen) < toUnixTimestamp64Milli(now64(3)) - {ms}"
    return f"if(status IN ({live}) AND mapContains(meta, '{HEARTBEAT_META}') AND {stale}, '{CRASHED}', status)"
