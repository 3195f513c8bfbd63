"""Intake: what the consumer has polled, and when it makes a batch (the batching policy).

A batch grows while the previous one is still being written, and until min_interval
after the previous batch started (loaded_interval after a batch of LOADED_POINTS or
more), unless the stream pauses for PAUSE_S: every batch costs a part in each table and
its share of merges, a fixed cost in engine CPU whatever its size, so fewer, larger
batches leave the CPU to everything else, and a live stream's batches come at most
every min_interval. An idle pipeline that receives a record writes it after
batch_window.

A batch stops growing at max_batch_bytes of record values, and what was polled beyond
waits (the carry) to start the next one, cut by `split` so that no partition waits
behind another's backlog: the engine's insert of one block costs more per row beyond a
few hundred thousand rows. A full batch is prepared at once, while the previous one is
still being written, so that the engine goes from one write to the next without waiting
for Python.

Records polled before a rebalance may belong to another owner now, or come from before
the assignment's positions: a batch whose epoch (the processor's count of revocations
and assignments) changed while it grew is given up, as is a carry from an earlier epoch,
and the processor reads again from the stored positions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from aiokafka import TopicPartition

LOADED_POINTS = 20_000  # a batch this large means a heavy stream (a live one at 20,000 points/s makes ~1,000): batch less often
PAUSE_S = 0.04  # a poll this long with nothing new: the stream paused, write now
MAX_BATCH_BYTES = 2_500_000  # ~250,000 points of packed rows frames (8-12 bytes a point on the wire)
WRITE_POLL_S = 0.02  # while a batch is written, take what the consumer has fetched this often
POLL_MS = 100  # the wait for a first record

Polled = dict[TopicPartition, list[Any]]


class Poller(Protocol):
    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> Polled: ...


def split(data: Polled, budget: int) -> tuple[Polled, Polled]:
    """A batch of at most `budget` bytes of record values (at least one record), taken
    round-robin from the partitions' heads so that none waits behind another's backlog,
    and the rest, each partition's records still in offset order."""
    taken = {tp: 0 for tp in data}
    size = 0
    progress = True
    while progress:
        progress = False
        for tp, messages in data.items():
            i = taken[tp]
            if i == len(messages):
                continue
            record = len(messages[i].value or b"")
            if size and size + record > budget:
                continue
            taken[tp] = i + 1
            size += record
            progress = True
    batch = {tp: messages[: taken[tp]] for tp, messages in data.items() if taken[tp]}
    rest = {tp: messages[taken[tp] :] for tp, messages in data.items() if taken[tp] < len(messages)}
    return batch, rest


class Intake:
    def __init__(
        self,
        consumer: Poller,
        epoch: Callable[[], int],
        *,
        max_records: int = 50_000,
        batch_window: float = 0.005,
        min_interval: float = 0.1,
        loaded_interval: float = 0.25,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.epoch = epoch
        self.max_records = max_records
        self.batch_window = batch_window
        self.min_interval = min_interval
        self.loaded_interval = loaded_interval
        self.max_batch_bytes = max_batch_bytes
        self.clock = clock
        self.carry: Polled = {}  # polled, not in a batch yet (see split)
        self._carry_epoch = 0
        self._batch_started = float("-inf")
        self._last_points = 0

    def stale(self, epoch: int) -> bool:
        """A carry polled before a rebalance."""
        return bool(self.carry) and self._carry_epoch != epoch

    def drop(self) -> None:
        self.carry = {}

    def started(self, points: int) -> None:
        """A batch of `points` points was prepared and goes to the write now."""
        self._batch_started = self.clock()
        self._last_points = points

    async def first(self) -> Polled:
        """The carry, else what one poll brings (empty when nothing came; raises when the poll fails)."""
        if self.carry:
            data, self.carry = self.carry, {}
            return data
        polled: Polled = await self.consumer.getmany(timeout_ms=POLL_MS, max_records=self.max_records)
        return polled

    async def grow(self, data: Polled, epoch: int, writing: asyncio.Future[bool] | None) -> Polled | None:
        """Grow `data` into a batch (see the module docstring); `writing` is done once the
        batch in flight has its data tables stored. None when a rebalance happened
        meanwhile: the caller drops everything polled and reads again."""
        count = sum(len(v) for v in data.values())
        size = sum(len(m.value or b"") for v in data.values() for m in v)
        interval = self.loaded_interval if self._last_points >= LOADED_POINTS else self.min_interval
        arrived = self.clock()  # when records last came in: a pause counts from there, also across a write
        deadline = max(arrived + self.batch_window, self._batch_started + interval)
        while count < self.max_records and size < self.max_batch_bytes:
            if writing is not None and not writing.done():
                if self.clock() - arrived >= PAUSE_S:
                    break  # the stream paused: prepare now, ready to go once the write ends
                # The consumer keeps fetching in the background; take what it has every
                # WRITE_POLL_S until the data tables are written or the batch is full.
                await asyncio.wait({writing}, timeout=WRITE_POLL_S)
                timeout_ms = 0
            else:
                now = self.clock()
                left = min(deadline - now, arrived + PAUSE_S - now)
                if left <= 0:
                    break
                timeout_ms = max(1, int(left * 1000))
            more: Polled = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=self.max_records - count)
            if not more:
                if timeout_ms == 0:
                    continue  # still writing, or the write just ended: wait on, up to the deadline or a pause
                break  # the deadline passed, or the stream paused: write what there is
            if self.epoch() != epoch:
                break
            arrived = self.clock()
            for tp, messages in more.items():
                data.setdefault(tp, []).extend(messages)
                count += len(messages)
                size += sum(len(m.value or b"") for m in messages)
        if self.epoch() != epoch:
            return None
        if size > self.max_batch_bytes:
            data, self.carry = split(data, self.max_batch_bytes)
            self._carry_epoch = epoch
        return data
