"""Shared benchmark plumbing: machine description and an in-process pipeline."""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {mem} RAM, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pipeline:
    """A real broker (started here unless given) + processor(s) on a background loop."""

    def __init__(self, kafka: str | None = None, home: Path | None = None, partitions: int = 8) -> None:
        from runstream.config import Settings
        from runstream.kafka_broker import LocalBroker

        self.home = home or Path(tempfile.mkdtemp(prefix="runstream-bench-"))
        self.broker = None
        if kafka is None:
            kafka = f"127.0.0.1:{free_port()}"
            self.broker = LocalBroker(self.home, kafka)
            self.broker.start()
        self.settings = Settings().with_(
            home=self.home, kafka=kafka, topic_prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=partitions, api_key=None
        )
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.processors: list[Any] = []
        self.stores: list[Any] = []

    def run(self, coro: Any, timeout: float = 300) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_processor(self, store: Any) -> Any:
        from processor.consumer import Processor

        proc = Processor(self.settings, store, publish_live=False)
        self.run(proc.start())
        self.processors.append(proc)
        self.stores.append(store)
        return proc

    def count(self) -> int:
        total = 0
        for store in {id(s): s for s in self.stores}.values():
            total += int(
                store.query_rows("SELECT count() FROM metric_points WHERE kafka_topic = {t:String}", {"t": self.settings.events_topic})[0][0]
            )
        return total

    def wait_count(self, expected: int, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= expected:
                return time.perf_counter()
            time.sleep(0.05)
        raise TimeoutError(f"only {self.count()} of {expected} points stored after {timeout}s")

    def close(self) -> None:
        for proc in self.processors:
            try:
                self.run(proc.stop(), 60)
            except Exception:
                pass
        if self.broker is not None:
            self.broker.stop()
