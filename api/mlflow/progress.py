"""How far the processors have stored each partition of the events topic, against what Kafka
has acknowledged there: the ground truth of read-after-write for any api instance.

A write is acknowledged (its record is below the partition's end offset) before the client
hears back, and the processor group commits a partition's offset only once every table
holds the records below it (docs/storage.md). So a read that waits until the group's
committed offset of a run's partition reaches the end offset read when the read began sees
every write acknowledged before it, whichever api instance took the write. A run's events
are keyed by its id, so they are on the partition the producer's partitioner picks for it.

Two broker round trips per check (ListOffsets, OffsetFetch), then OffsetFetch alone while
waiting. A partition given up on after a timeout (the processors are far behind) is not
waited for again until its committed offset passes the end it had then: reads answer from
what is stored meanwhile instead of each waiting the whole bound.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from runstream import kafka
from runstream.config import Settings

Ends = dict[TopicPartition, int]


class Progress:
    def __init__(self, settings: Settings) -> None:
        self.topic = settings.events_topic
        self.group = settings.group_id
        self.settings = settings
        self._partitioner = DefaultPartitioner()
        self._lock = asyncio.Lock()
        self._offsets: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._coordinator: int | None = None
        self._given_up: Ends = {}

    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._offsets is None or self._admin is None:
            async with self._lock:
                if self._offsets is None:
                    offsets = kafka.offsets_reader(self.settings)
                    await offsets.start()
                    self._offsets = offsets
                if self._admin is None:
                    admin = kafka.admin_client(self.settings.kafka)
                    await admin.start()
                    self._admin = admin
        return self._offsets, self._admin

    async def close(self) -> None:
        if self._offsets is not None:
            await self._offsets.stop()
            self._offsets = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def partitions(self, producer: AIOKafkaProducer, runs: list[str] | None) -> list[TopicPartition]:
        """The partitions holding these runs' events (None: every partition)."""
        ids = sorted(await producer.partitions_for(self.topic))
        if runs is None:
            return [TopicPartition(self.topic, p) for p in ids]
        return sorted({TopicPartition(self.topic, self._partitioner(run.encode(), ids, ids)) for run in runs})

    async def behind(self, tps: list[TopicPartition]) -> Ends:
        """Of these partitions, those with acknowledged records not yet stored: their end offsets now."""
        offsets, _ = await self._clients()
        ends: dict[TopicPartition, int] = await offsets.end_offsets(tps)
        return await self.still_behind({tp: end for tp, end in ends.items() if end > 0})

    async def still_behind(self, ends: Ends) -> Ends:
        """Of these partitions and end offsets, those the processor group has not stored up to the end."""
        if not ends:
            return {}
        committed = await self._committed(list(ends))
        out: Ends = {}
        for tp, end in ends.items():
            done = committed.get(tp, -1)
            given_up = self._given_up.get(tp)
            if given_up is not None:
                if done < given_up:
                    continue
                del self._given_up[tp]
            if done < end:
                out[tp] = end
        return out

    def give_up(self, ends: Ends) -> None:
        """After a timeout: later reads do not wait for these partitions until the group has stored up to these ends."""
        self._given_up.update(ends)

    async def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        _, admin = await self._clients()
        if self._coordinator is None:
            self._coordinator = await admin.find_coordinator(self.group)
        try:
            answer: dict[TopicPartition, Any] = await admin.list_consumer_group_offsets(self.group, self._coordinator, tps)
        except Exception:
            self._coordinator = None  # moved, or the broker restarted: found again next time
            raise
        return {tp: int(meta.offset) for tp, meta in answer.items()}
