"""Shared benchmark plumbing: machine description, an in-process pipeline, `runstream processor`
processes with an engine each, and exact read-back of what they stored."""

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (its threads included), from /proc; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        self.broker: Any = None
        if kafka is None:
            kafka = f"127.0.0.1:{free_port()}"
            self.broker = LocalBroker(self.home, kafka)
            self.broker.start()
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        self.settings = Settings().with_(
            home=self.home, kafka=kafka, topic_prefix=prefix, group_id=f"g-{prefix}", partitions=partitions, api_key=None
        )
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.processors: list[Any] = []
        self.stores: list[Any] = []

    def run(self, coro: Any, timeout: float = 300) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_processor(self, store: Any, publish_live: bool = False) -> Any:
        from runstream.processor.consumer import Processor

        proc = Processor(self.settings, store, publish_live=publish_live)
        self.run(proc.start())
        self.processors.append(proc)
        self.stores.append(store)
        return proc

    def start_api(self, store: Any) -> tuple[Any, Any, Any, int]:
        """A live-publishing processor and the api on it, as `runstream up` runs them, on this
        loop and a free loopback port, started and tuned once its live hub is ready:
        (processor, app, uvicorn server, port)."""
        import uvicorn

        from runstream.api.app import create_app, listen_socket, server_config
        from runstream.server import tune_gc

        proc = self.start_processor(store, publish_live=True)
        port = free_port()
        app = create_app(self.settings, store, proc)
        server = uvicorn.Server(server_config(app, "127.0.0.1", port))
        sock = listen_socket("127.0.0.1", port)
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(server.serve(sockets=[sock])))
        while not server.started or not app.state.hub.ready.is_set():
            time.sleep(0.05)
        tune_gc()  # as `runstream up` does once started
        return proc, app, server, port

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


def rss_mib(pid: int | None = None) -> float:
    """Resident set size of a process (this one by default) in MiB: psutil when installed, else /proc."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")
    return float(psutil.Process(pid).memory_info().rss) / 1024**2


class ProcessorProcess:
    """`runstream processor` in its own process, as deployed: progress from its Prometheus
    counters (points_written counts a point once its insert has returned)."""

    def __init__(
        self, settings: Any, engine: Path, group: str | None = None, name: str = "processor", start_timeout: float = 120.0, dsn: str | None = None
    ) -> None:
        """`engine`: the embedded engine's folder, unless `dsn` names a ClickHouse server's database."""
        self.engine = engine
        self.port = free_port()
        env = {
            **os.environ,
            "RUNSTREAM_HOME": str(settings.home),
            "RUNSTREAM_KAFKA": settings.kafka,
            "RUNSTREAM_CLICKHOUSE": dsn or f"chdb://{engine}",
            "RUNSTREAM_TOPIC_PREFIX": settings.topic_prefix,
            "RUNSTREAM_PARTITIONS": str(settings.partitions),
        }
        self.log_path = Path(settings.home) / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        cmd = [sys.executable, "-m", "runstream.cli", "processor", "--metrics-port", str(self.port)]
        if group:
            cmd += ["--group", group]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout
        while self._metrics() is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(grace=5)  # never leave a half-started processor behind
                raise RuntimeError(f"runstream processor did not start; last lines of {self.log_path}:\n{self.tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

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

    def stop(self, grace: float = 60.0) -> int | None:
        """SIGINT (finish the batch in flight, commit, leave the group), SIGKILL after `grace` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode

    @staticmethod
    def count_rows(engine: Path, run_ids: list[str]) -> tuple[int, int]:
        """(rows, distinct (run, metric, step)) of these runs, read in a process of its own."""
        code = (
            "import json, sys; from runstream.storage.store import Store; "
            "sql = 'SELECT count(), uniqExact(run_id, metric, step) FROM metric_points WHERE run_id IN {ids:Array(String)}'; "
            "print(json.dumps(Store(sys.argv[1]).query_rows(sql, {'ids': json.loads(sys.argv[2])})[0]))"
        )
        args = [sys.executable, "-c", code, f"chdb://{engine}", json.dumps(run_ids)]
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"counting rows in {engine} failed: {out.stderr[-2000:]}")
        rows, distinct = json.loads(out.stdout.strip().splitlines()[-1])
        return int(rows), int(distinct)


# The workload's points as exact integers: run index (in the given id list), metric index
# (names metric_<j>), step. Every key of a workload of R runs x S steps x M metrics is
# in 0 .. R*M*S - 1, once.
POINT_KEY_SQL = (
    "SELECT (indexOf({ids:Array(String)}, run_id) - 1) * {metrics:UInt64} * {steps:UInt64} "
    "+ toUInt64(substring(metric, 8)) * {steps:UInt64} + toUInt64(step) AS k "
    "FROM metric_points WHERE run_id IN {ids:Array(String)}"
)


def point_keys(store: Any, run_ids: list[str], metrics: int, steps: int) -> Any:
    """POINT_KEY_SQL over a Store of this process, as a numpy array."""
    params = {"ids": run_ids, "metrics": metrics, "steps": steps}
    return store.client().query_arrow(POINT_KEY_SQL, parameters=params).column(0).to_numpy()


def shard_point_keys(engine: Path, run_ids: list[str], metrics: int, steps: int) -> Any:
    """POINT_KEY_SQL over a stopped instance's engine, read in a process of its own (one engine per process)."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "keys.npy"
        ids_path = Path(tmp) / "ids.json"
        ids_path.write_text(json.dumps(run_ids))
        code = (
            "import json, sys; import numpy as np; from runstream.storage.store import Store; from bench.common import point_keys; "
            "ids = json.loads(open(sys.argv[2]).read()); "
            "np.save(sys.argv[5], point_keys(Store(sys.argv[1]), ids, int(sys.argv[3]), int(sys.argv[4])))"
        )
        args = [sys.executable, "-c", code, f"chdb://{engine}", str(ids_path), str(metrics), str(steps), str(out_path)]
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"reading {engine} failed: {out.stderr[-2000:]}")
        return np.load(out_path)


def union_check(shards: list[Any], want: int) -> dict[str, int]:
    """Exact exactly-once check of per-shard point keys against keys 0 .. want-1: rows, distinct
    keys in the union, keys stored more than once within one shard, keys in more than one shard,
    keys missing, keys outside the workload."""
    import numpy as np

    within = sum(len(k) - len(np.unique(k)) for k in shards)
    per_shard_unique = [np.unique(k) for k in shards]
    both = np.concatenate(per_shard_unique) if per_shard_unique else np.array([], dtype=np.uint64)
    union = np.unique(both)
    inside = union[union < want]
    return {
        "rows": int(sum(len(k) for k in shards)),
        "distinct": int(len(union)),
        "twice_within_a_shard": int(within),
        "in_two_shards": int(len(both) - len(union)),
        "missing": int(want - len(inside)),
        "unexpected": int(len(union) - len(inside)),
    }
