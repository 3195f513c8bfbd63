"""Watermarks: per table, the highest Kafka offset each topic-partition has stored there.

Exactly-once rests on them. A table's inserts of a batch are atomic and in offset order,
so a record at or below the table's mark is in that table, and a replay (after a crash, a
rebalance, a retry) skips it there. The marks are read back from the tables when
partitions are assigned (`load`), moved as each table's insert returns (`advance`), and
read by preparation (batch.build skips per table; the ingested-events ledger, `stored`,
skips the whole record) and by repositioning (a partition resumes after `stored`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from aiokafka import TopicPartition

from runstream.processor import batch as batching
from runstream.processor.retry import Retry
from runstream.storage.schema import WATERMARKED_TABLES


class Reader(Protocol):
    def query_rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...


class Watermarks:
    def __init__(self, store: Reader, retry: Retry) -> None:
        self.store = store
        self.retry = retry
        self.tables: batching.Watermarks = {t: {} for t in WATERMARKED_TABLES}

    def stored(self, topic: str, partition: int) -> int:
        """The highest offset of the partition with every effect stored (-1: none)."""
        return self.tables["ingested_events"].get((topic, partition), -1)

    def advance(self, table: str, batches: Iterable[batching.Batch]) -> None:
        """After `table`'s insert of these batches returned."""
        marks = self.tables[table]
        for built in batches:
            for key, offset in built.high[table].items():
                marks[key] = max(marks.get(key, -1), offset)

    async def load(self, assigned: set[TopicPartition]) -> None:
        """Read the marks of newly assigned partitions back from the tables."""
        if not assigned:
            return
        parts = sorted({tp.partition for tp in assigned})
        topic = next(iter(assigned)).topic

        def load() -> dict[str, dict[tuple[str, int], int]]:
            out: dict[str, dict[tuple[str, int], int]] = {}
            for table in WATERMARKED_TABLES:
                rows = self.store.query_rows(
                    f"SELECT kafka_partition, max(kafka_offset) FROM {table} "
                    "WHERE kafka_topic = {t:String} AND kafka_partition IN {p:Array(UInt16)} GROUP BY kafka_partition",
                    {"t": topic, "p": parts},
                )
                out[table] = {(topic, int(p)): int(o) for p, o in rows}
            return out

        loaded = await self.retry(load, "load watermarks")
        for table, marks in loaded.items():
            for key in [k for k in self.tables[table] if k[0] == topic and k[1] in parts]:
                del self.tables[table][key]
            self.tables[table].update(marks)
