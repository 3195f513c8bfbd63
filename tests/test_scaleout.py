"""Scale-out: two `runstream processor` processes in one consumer group, each with its own
embedded engine (as the shards of a ClickHouse cluster would be), write every point
exactly once between them, across an instance joining and another leaving mid-stream."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest import Experiment, Run
from runstream.config import Settings
from tests.conftest import free_port, new_settings, wait_until

ROOT = Path(__file__).resolve().parent.parent
RUNS = 16  # keys spread over the topic's 8 partitions, so both instances get some
STEPS_PER_PART = 400
METRICS = ("loss", "acc")


class Instance:
    """One processor process; progress from its Prometheus counters."""

    def __init__(self, name: str, settings: Settings, engine: Path) -> None:
        self.name = name
        self.engine = engine
        self.port = free_port()
        env = {
            **os.environ,
            "RUNSTREAM_HOME": str(engine.parent / f"home-{name}"),
            "RUNSTREAM_KAFKA": settings.kafka,
            "RUNSTREAM_CLICKHOUSE": f"chdb://{engine}",
            "RUNSTREAM_TOPIC_PREFIX": settings.topic_prefix,
            "RUNSTREAM_PARTITIONS": str(settings.partitions),
        }
        self.log_path = engine.parent / f"processor-{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "runstream.cli", "processor", "--group", f"g-{settings.topic_prefix}", "--metrics-port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.metric("points_written_total") is not None or self.proc.poll() is not None, 60, what=f"processor {name} up")
        assert self.proc.poll() is None, self.log_path.read_text()[-2000:]

    def metric(self, name: str) -> int | None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return None
        found = re.search(rf"^runstream_processor_{name} ([0-9.e+-]+)$", text, re.M)
        return int(float(found.group(1))) if found else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # graceful: finish the batch in flight, commit, leave the group
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def shard_points(engine: Path, run_ids: list[str]) -> list[list[Any]]:
    """(run_id, metric, step, value) rows of a stopped instance's engine, read in a process of its own."""
    code = (
        "import json, sys; from processor.store import Store; "
        "rows = Store(sys.argv[1]).query_rows("
        "'SELECT run_id, metric, step, value FROM metric_points WHERE run_id IN {ids:Array(String)}', {'ids': json.loads(sys.argv[2])}); "
        "print(json.dumps([list(r) for r in rows]))"
    )
    out = subprocess.run([sys.executable, "-c", code, f"chdb://{engine}", json.dumps(run_ids)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows: list[list[Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


@pytest.fixture()
def instances() -> Iterator[list[Instance]]:
    started: list[Instance] = []
    yield started
    for inst in started:  # on failure too: no processor outlives the test
        inst.stop()


def value(step: int, metric: int) -> float:
    return step * 0.5 + metric


def log_part(runs: list[Run], part: int, pace: float = 0.0) -> None:
    """Log one part; with pace, spread it over ~pace seconds (a training loop, not a burst),
    so that a rebalance lands while its records are still arriving."""
    for i, step in enumerate(range(part * STEPS_PER_PART, (part + 1) * STEPS_PER_PART)):
        for run in runs:
            run.log_metrics({name: value(step, j) for j, name in enumerate(METRICS)}, step=step)
        if pace and i % 20 == 19:
            time.sleep(pace / (STEPS_PER_PART / 20))
    for run in runs:
        run.flush()


def test_two_processors_split_the_partitions_and_write_every_point_once_across_rebalances(
    home: Path, kafka_bootstrap: str, tmp_path: Path, instances: list[Instance]
) -> None:
    settings = new_settings(home, kafka_bootstrap)
    per_part = RUNS * STEPS_PER_PART * len(METRICS)
    a = Instance("a", settings, tmp_path / "shard-a")
    instances.append(a)
    exp = Experiment("scale-out", settings=settings)
    runs = [exp.start_logging(name=f"shard-{i}", capture_output=False) for i in range(RUNS)]
    ids = [r.id for r in runs]

    log_part(runs, 0)
    wait_until(lambda: a.metric("points_written_total") == per_part, 60, what="instance a alone stores part 1")

    logger = threading.Thread(target=log_part, args=(runs, 1, 3.0))
    logger.start()
    b = Instance("b", settings, tmp_path / "shard-b")  # joins while part 2 streams in: the group rebalances
    instances.append(b)
    logger.join(120)
    wait_until(
        lambda: (a.metric("points_written_total") or 0) + (b.metric("points_written_total") or 0) >= 2 * per_part,
        60,
        what=f"part 2 stored (a {a.metric('points_written_total')}, b {b.metric('points_written_total')}, of {2 * per_part})",
    )
    assert (b.metric("points_written_total") or 0) > 0, "the joining instance got no partitions"

    # a leaves while part 3 is being logged: its in-flight batch is committed, b takes over its partitions.
    logger = threading.Thread(target=log_part, args=(runs, 2, 3.0))
    logger.start()
    wait_until(lambda: (a.metric("points_written_total") or 0) + (b.metric("points_written_total") or 0) > 2 * per_part, 60, what="part 3 under way")
    a.stop()
    logger.join(120)
    stored_a = shard_points(a.engine, ids)
    wait_until(
        lambda: len(stored_a) + (b.metric("points_written_total") or 0) >= 3 * per_part,
        60,
        what=f"part 3 stored after a left (a stored {len(stored_a)}, b {b.metric('points_written_total')}, of {3 * per_part})",
    )
    for run in runs:
        run.complete()
    b.stop()
    stored_b = shard_points(b.engine, ids)

    keys_a = {(r[0], r[1], r[2]) for r in stored_a}
    keys_b = {(r[0], r[1], r[2]) for r in stored_b}
    assert len(keys_a) == len(stored_a) and len(keys_b) == len(stored_b), "a point stored twice within a shard"
    assert not keys_a & keys_b, f"{len(keys_a & keys_b)} points stored by both instances"
    assert len(stored_a) + len(stored_b) == 3 * per_part
    assert stored_a and stored_b
    for run_id, metric, step, stored in stored_a + stored_b:
        assert stored == value(step, METRICS.index(metric)), (run_id, metric, step, stored)
    # Every step of every run and metric, from the union of the shards.
    want = {(r, m, s) for r in ids for m in METRICS for s in range(3 * STEPS_PER_PART)}
    assert keys_a | keys_b == want
