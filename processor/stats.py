"""The processor's counters: what it consumed, stored, skipped and refused, and where its time went.

One ProcessorStats per processor, shared by its parts, each adding to its own counters;
the api's /healthz and /metrics read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class ProcessorStats:
    events_in: int = 0
    points_written: int = 0
    events_written: int = 0
    events_skipped: int = 0
    batches: int = 0
    batches_retried: int = 0
    # ClickHouse calls that failed with a non-transient error (each one stops the processor).
    fatal_storage_errors: int = 0
    dead_letters: int = 0
    live_messages: int = 0
    live_bytes: int = 0
    consumer_lag: int = 0
    clickhouse_ok: bool = True
    last_error: str = ""
    started_at: float = field(default_factory=time.time)
    # Cumulative seconds per phase of a batch: where the processor spends its time.
    seconds: dict[str, float] = field(
        default_factory=lambda: {"decode": 0.0, "prepare": 0.0, "write": 0.0, "ledger": 0.0, "live": 0.0, "commit": 0.0}
    )
