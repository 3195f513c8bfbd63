"""Unit test (no services): a send that stalls for STALL_S ends the shipper's drain with
a timeout, and the events not handed to the producer go back to their buffer, in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import runstream.ingest.shipper as shipper_module
from runstream.config import Settings
from runstream.ingest.buffer import RunBuffer
from runstream.ingest.shipper import Shipper
from runstream.wire import decode
from tests.conftest import wait_until


class _StallingProducer:
    """Acknowledges `accept` sends, then blocks every later one as a full batch on a stalled broker
    does; `on_stall` runs as a send starts to block (the training thread logging meanwhile)."""

    def __init__(self, accept: int) -> None:
        self.accept = accept
        self.sent: list[bytes] = []
        self.on_stall: Callable[[], None] = lambda: None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        if len(self.sent) >= self.accept:
            self.on_stall()
            await asyncio.Event().wait()
        self.sent.append(value)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _seq(event: dict[str, Any]) -> int:
    return int(event["id"].rsplit(":", 1)[1])


def test_a_send_stalled_for_stall_s_times_out_the_drain_and_requeues_the_rest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shipper_module, "STALL_S", 0.05)
    producer = _StallingProducer(accept=2)
    # A linger far beyond the test: the shipper drains once, when nudged.
    shipper = Shipper(Settings().with_(home=tmp_path, kafka="127.0.0.1:9"), producer_factory=lambda: producer, linger=600)
    try:
        buffer = RunBuffer("run-stall", "default", ["loss"], shipper)
        shipper.register(buffer)
        for step in range(3):
            buffer.add_point(0, step, 1.0 / (step + 1))
            buffer.enqueue("tags", {"tags": {f"k{step}": str(step)}})  # seals the point before it: two events a step
        assert buffer.events == 6 and buffer.has_pending()
        producer.on_stall = lambda: buffer.enqueue("tags", {"tags": {"late": "1"}})
        started = time.monotonic()
        shipper.nudge()
        wait_until(lambda: shipper.spooling, 10, interval=0.01, what="the stalled drain to end and the shipper to spool")
        assert time.monotonic() - started < 2.5  # STALL_S ended the drain, not a longer timeout
        assert shipper.sent_events == 2 and shipper.acked_events == 2
        sent = [decode(value) for value in producer.sent]
        rest = buffer.take_events()
        # The two sent, then the rest as they were queued (a metrics and a tags event a step),
        # ahead of the event logged during the stall.
        assert [_seq(ev) for ev in sent] + [_seq(ev) for ev, _ in rest] == list(range(1, 8))
        assert [ev["kind"] for ev, _ in rest] == ["metrics", "tags", "metrics", "tags", "tags"] and "late" in rest[-1][0]["tags"]
        assert [points for _, points in rest] == [1, 0, 1, 0, 0] and buffer.buffered == 2  # the first point was acknowledged
    finally:
        shipper.close(5)
