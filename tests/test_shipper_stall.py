"""Unit test (no services): a send that stalls for STALL_S ends the shipper's drain with
a timeout, and the events not handed to the producer go back to their run, in order."""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

import pytest
import runstream.ingest.shipper as shipper_module
from runstream.ingest.run import Experiment, Run
from runstream.ingest.shipper import Shipper

from runstream.config import Settings
from tests.conftest import NullShipper


class _StallingProducer:
    """Takes `accept` sends, then blocks the next one as a full batch on a stalled broker does."""

    def __init__(self, accept: int) -> None:
        self.accept = accept
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        if len(self.sent) >= self.accept:
            await asyncio.Event().wait()
        self.sent.append(value)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        return fut  # never acknowledged: the test looks at what was handed over


def _drain_only_shipper(settings: Settings, producer: _StallingProducer, runs: list[Run]) -> Shipper:
    # The drain alone, without the shipper's thread and event loop (Shipper() starts both).
    shipper = Shipper.__new__(Shipper)
    shipper.settings = settings
    shipper._runs = weakref.WeakValueDictionary({r.id: r for r in runs})
    shipper._producer = producer  # type: ignore[assignment]
    shipper._inflight = set()
    shipper._sent_at = {}
    shipper.sent_events = 0
    return shipper


def test_a_send_stalled_for_stall_s_times_out_the_drain_and_requeues_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shipper_module, "STALL_S", 0.05)
    settings = Settings().with_(kafka="127.0.0.1:9")
    exp = Experiment("unit", settings=settings)
    run = Run(exp, shipper=NullShipper())  # type: ignore[arg-type]
    for step in range(3):
        run.log("loss", 1.0 / (step + 1), step=step)
        run.tag(f"k{step}", step)  # an event of another kind seals the metrics before it
    with run._lock:
        run._seal()
        queued = [ev["id"] for ev, _ in run._pending]
    assert len(queued) >= 6
    producer = _StallingProducer(accept=2)
    shipper = _drain_only_shipper(settings, producer, [run])

    async def drain() -> None:
        shipper._drain_lock = asyncio.Lock()
        await shipper._drain()

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(drain(), 5))  # the outer bound only guards the test itself
    assert time.monotonic() - started < 2.5  # the drain's own STALL_S timeout ended it, not the guard
    assert len(producer.sent) == 2 and shipper.sent_events == 2
    assert [ev["id"] for ev, _ in run._pending] == queued[2:]  # the rest, in order, for the next drain
