"""The dead-letter topic: records that cannot be decoded or validated, with the reason.

A refused record is sent once per process: a batch read again after a rebalance (or a
loop error) meets it again, and no table's watermark covers it, so the highest offset
sent per partition is kept. A restart may send one again (at least once, as the
topic's consumers are told). Sending is the batch's last step before its commit; a
send that fails is tried again when the batch is read again.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any, Protocol

import orjson

from runstream.processor.stats import ProcessorStats

log = logging.getLogger("runstream.processor")


class Sender(Protocol):
    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> Any: ...


class DeadLetters:
    def __init__(self, producer: Sender, topic: str, stats: ProcessorStats) -> None:
        self.producer = producer
        self.topic = topic
        self.stats = stats
        self._sent: dict[tuple[str, int], int] = {}  # highest offset sent per (topic, partition)

    async def send(self, dead: list[tuple[Any, str]]) -> None:
        """Quarantine (record, reason) pairs not sent before; raises when a send fails."""
        for msg, reason in dead:
            key = (msg.topic, msg.partition)
            if msg.offset <= self._sent.get(key, -1):
                continue
            self.stats.dead_letters += 1
            log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)
            payload = orjson.dumps(
                {
                    "reason": reason,
                    "topic": msg.topic,
                    "partition": msg.partition,
                    "offset": msg.offset,
                    "key": msg.key.decode("utf-8", "replace") if msg.key else None,
                    "value_b64": base64.b64encode(msg.value or b"").decode(),
                    "at": time.time(),
                }
            )
            await self.producer.send_and_wait(self.topic, payload, key=msg.key)
            self._sent[key] = msg.offset  # once sent: a send that failed is tried again on a re-read
