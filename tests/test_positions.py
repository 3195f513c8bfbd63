"""Positions on an assignment, with fakes for Kafka and the store (no broker).

aiokafka hands out a new assignment's records (fetched from the committed offset or
the reset, here the earliest) as soon as it has the assignment, while the processor's
on_partitions_assigned is still loading the watermarks and repositioning: nothing
polled before that is done may be prepared.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from runstream.config import Settings
from runstream.processor.consumer import KafkaParts, Processor
from runstream.processor.intake import Intake
from runstream.processor.positions import Commits, Positions

TP = TopicPartition("ev", 0)


class _Consumer:
    """One partition of `size` records, read from `pos` (the reset: the earliest)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0
        self.polled = asyncio.Event()  # a poll returned records

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.pos = 0

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.size

    async def position(self, tp: TopicPartition) -> int:
        return self.pos

    async def getmany(self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0)
        if self.pos >= self.size:
            return {}
        records = [SimpleNamespace(offset=o, value=b"x") for o in range(self.pos, self.size)]
        self.pos = self.size
        self.polled.set()
        return {TP: records}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...


class _Store:
    """The tables hold offsets 0..stored of the partition; reads wait for `gate`."""

    def __init__(self, stored: int) -> None:
        self.stored = stored
        self.gate = asyncio.Event()

    async def call_write(self, fn: Any, *, lane: int = 0) -> Any:
        await self.gate.wait()
        return fn()

    def query_rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return [(TP.partition, self.stored)]


async def _assign_while_polling(size: int, stored: int) -> list[tuple[int, int]]:
    """The loop polls while the assignment's watermarks load; returns each record prepared
    as (offset, the partition's watermark when it was prepared)."""
    consumer, store = _Consumer(size), _Store(stored)
    proc = Processor(Settings(), store, publish_live=False)  # type: ignore[arg-type]
    proc._parts = KafkaParts(
        consumer=consumer,
        producer=None,
        intake=Intake(consumer, lambda: proc._epoch),
        positions=Positions(consumer, proc.watermarks, proc.stats),
        commits=Commits(consumer),
        dead_letters=None,  # type: ignore[arg-type]
        publisher=None,  # type: ignore[arg-type]
    )
    prepared: list[tuple[int, int]] = []

    class Preparer:
        async def prepare(self, data: dict[TopicPartition, list[Any]]) -> Any:
            prepared.extend((m.offset, proc.watermarks.stored(tp.topic, tp.partition)) for tp, ms in data.items() for m in ms)
            return SimpleNamespace(built=SimpleNamespace(points=0))

    async def finish(*args: Any) -> bool:
        return True

    proc.preparer = Preparer()  # type: ignore[assignment]
    proc._finish = finish  # type: ignore[method-assign]

    assigning = asyncio.create_task(proc._on_assigned({TP}))  # as aiokafka calls it: the assignment is in place
    polling = asyncio.create_task(proc._step())
    await asyncio.wait_for(consumer.polled.wait(), 5)  # the records from the reset position, before the marks are known
    store.gate.set()
    await asyncio.wait_for(asyncio.gather(assigning, polling), 5)
    for _ in range(3):  # the loop goes on: what it reads now comes from the new positions
        await asyncio.wait_for(proc._step(), 5)
        await proc.wait_inflight()
    assert consumer.pos == size
    return prepared


def test_records_polled_while_an_assignment_loads_its_watermarks_are_read_again_from_its_new_position() -> None:
    # Offsets 0..5 stored: the partition resumes at 6, and only 6..9 are prepared, each once,
    # with the watermark known (before, 0..9 were prepared with none: -1).
    assert asyncio.run(_assign_while_polling(size=10, stored=5)) == [(6, 5), (7, 5), (8, 5), (9, 5)]


def test_an_assignment_whose_range_is_all_stored_prepares_nothing() -> None:
    assert asyncio.run(_assign_while_polling(size=10, stored=9)) == []
