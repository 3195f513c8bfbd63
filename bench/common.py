"""Shared benchmark plumbing: machine description and an in-process pipeline."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
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


ROOT = Path(__file__).resolve().parent.parent


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


class ProcessorProcess:
    """`runstream processor` in its own process, as deployed: progress from its Prometheus
    counters (points_written counts a point once its insert has returned)."""

    def __init__(self, settings: Any, engine: Path, group: str | None = None, name: str = "processor") -> None:
        self.engine = engine
        self.port = free_port()
        env = {
            **os.environ,
            "RUNSTREAM_HOME": str(settings.home),
            "RUNSTREAM_KAFKA": settings.kafka,
            "RUNSTREAM_CLICKHOUSE": f"chdb://{engine}",
            "RUNSTREAM_TOPIC_PREFIX": settings.topic_prefix,
            "RUNSTREAM_PARTITIONS": str(settings.partitions),
        }
        self.log = open(Path(settings.home) / f"{name}.log", "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "runstream.cli", "processor", "--metrics-port", str(self.port)]
        if group:
            cmd += ["--group", group]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while self._metrics() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"runstream processor did not start; see {self.log.name}")
            time.sleep(0.1)

    def _metrics(self) -> dict[str, float] | None:
        import urllib.request

        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        out = {}
        for line in text.splitlines():
            if line.startswith("runstream_processor_") and "{" not in line:
                name, _, value = line.partition(" ")
                out[name] = float(value)
        return out

    def _get(self, name: str) -> int:
        return int((self._metrics() or {}).get(name, 0))

    def points_written(self) -> int:
        return self._get("runstream_processor_points_written_total")

    def consumer_lag(self) -> int:
        return self._get("runstream_processor_consumer_lag")

    def dead_letters(self) -> int:
        return self._get("runstream_processor_dead_letters_total")

    def describe(self) -> str:
        return str(self._metrics())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    @staticmethod
    def count_rows(engine: Path, run_ids: list[str]) -> tuple[int, int]:
        """(rows, distinct (run, metric, step)) of these runs, read in a process of its own."""
        code = (
            "import json, sys; from processor.store import Store; "
            "sql = 'SELECT count(), uniqExact(run_id, metric, step) FROM metric_points WHERE run_id IN {ids:Array(String)}'; "
            "print(json.dumps(Store(sys.argv[1]).query_rows(sql, {'ids': json.loads(sys.argv[2])})[0]))"
        )
        args = [sys.executable, "-c", code, f"chdb://{engine}", json.dumps(run_ids)]
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        rows, distinct = json.loads(out.stdout.strip().splitlines()[-1])
        return int(rows), int(distinct)
