"""Kafka positions: where each assigned partition is read from, how far behind it is, and the commits.

Repositioning starts each assigned partition at the first record this shard has not
stored and no owner has committed: max(committed offset, own watermark + 1). With an
engine per instance, another instance's writes show only in the committed offsets. A
partition with neither starts at the consumer's reset (earliest); `rewind` seeks it
there explicitly, for records already fetched from it and then dropped.

Commits run in the background (Commits): a batch's offsets are committed once every
table holds it, and a replay of a range not yet committed is skipped by the watermarks,
so the next poll need not wait for the broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError

from runstream.processor.stats import ProcessorStats
from runstream.processor.watermarks import Watermarks

log = logging.getLogger("runstream.processor")

LAG_EVERY_S = 1.0


class Committer(Protocol):
    async def commit(self, offsets: dict[TopicPartition, int]) -> Any: ...


class Seeker(Protocol):
    def assignment(self) -> set[TopicPartition]: ...

    async def committed(self, tp: TopicPartition) -> int | None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    async def seek_to_beginning(self, *partitions: TopicPartition) -> Any: ...

    def highwater(self, tp: TopicPartition) -> int | None: ...

    async def position(self, tp: TopicPartition) -> int: ...


class Commits:
    def __init__(self, consumer: Committer) -> None:
        self.consumer = consumer
        self._pending: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    def schedule(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit these next offsets in the background; later offsets of a partition replace earlier ones."""
        self._pending.update(offsets)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())

    async def flush(self) -> None:
        """Until every scheduled commit has been tried."""
        task = self._task
        if task is not None:
            await task

    async def _loop(self) -> None:
        while self._pending:
            offsets, self._pending = self._pending, {}
            try:
                await self.consumer.commit(offsets)
            except Exception as exc:  # after a rebalance the new owner re-reads; watermarks skip what we wrote
                log.warning("offset commit failed (a replay will be skipped by watermarks): %s", exc)


class Positions:
    def __init__(self, consumer: Seeker, watermarks: Watermarks, stats: ProcessorStats, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.consumer = consumer
        self.watermarks = watermarks
        self.stats = stats
        self.clock = clock
        self._lag_at = float("-inf")

    async def reposition(self, assigned: Iterable[TopicPartition], *, rewind: bool = False) -> None:
        consumer = self.consumer
        for tp in assigned:
            try:
                committed = await consumer.committed(tp)
            except Exception as exc:  # the default position (committed or earliest) still applies
                log.warning("committed offset of %s unknown: %s", tp, exc)
                continue
            mark = self.watermarks.stored(tp.topic, tp.partition)
            try:
                if committed is not None or mark >= 0:
                    consumer.seek(tp, max(committed or 0, mark + 1))
                elif rewind:
                    await consumer.seek_to_beginning(tp)
            except (IllegalStateError, AssertionError):
                # Revoked while its committed offset was read (a rebalance started): the
                # partition's next owner positions it. Raising here ended the loop.
                log.info("%s no longer assigned; not repositioned", tp)

    async def update_lag(self) -> None:
        """Records behind the high-water marks, refreshed at most once a second (public
        consumer API only; position() returns at once for a partition being fetched)."""
        now = self.clock()
        if now - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = now
        consumer = self.consumer
        lag = 0
        for tp in list(consumer.assignment()):
            # A rebalance may revoke tp during the await: highwater() then asserts.
            try:
                high = consumer.highwater(tp)
                if high is None:
                    continue
                pos = await asyncio.wait_for(consumer.position(tp), 0.05)
            except Exception:  # reset or revoked meanwhile (highwater asserts): counted next time
                continue
            lag += max(0, high - pos)
        self.stats.consumer_lag = lag
