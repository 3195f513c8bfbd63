"""Scale-out: two `runstream processor` processes in one consumer group, each with its own
embedded engine (as the shards of a ClickHouse cluster would be), write every point
exactly once between them, across an instance joining and another leaving mid-stream.

A paced training loop logs without pause from before the first instance consumes until
after the second has taken over the partitions of the first; every phase change waits on
a condition (the instances' Prometheus counters, which count a point once its insert has
returned), never on a fixed delay.
"""

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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from runstream import Experiment, Run
from runstream.config import Settings
from tests.conftest import free_port, new_settings, wait_until

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 8
RUNS_PER_PARTITION = 2  # run ids chosen so that every partition carries runs: both instances get work
METRICS = ("loss", "acc")
STEPS_PER_SECOND = 150  # of every run: 16 runs x 2 metrics x 150 = 4,800 points/s
AFTER_LEAVE_STEPS = 150  # steps logged after the leaving instance has exited


class Instance:
    """One `runstream processor` process with an engine of its own; progress from its Prometheus counters."""

    def __init__(self, name: str, settings: Settings, engine: Path, group: str) -> None:
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
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        cmd = [sys.executable, "-m", "runstream.cli", "processor", "--group", group, "--metrics-port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_up(self) -> None:
        wait_until(lambda: self.metric("points_written_total") is not None or self.proc.poll() is not None, 60, what=f"processor {self.name} up")
        assert self.proc.poll() is None, f"processor {self.name} exited: {self.tail()}"

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def metric(self, name: str) -> int | None:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return None
        found = re.search(rf"^runstream_processor_{name} ([0-9.e+-]+)$", text, re.M)
        return int(float(found.group(1))) if found else None

    def written(self) -> int:
        return self.metric("points_written_total") or 0

    def stop(self, grace: float = 60.0) -> None:
        """SIGINT, as a terminal or an orchestrator would: finish the batch in flight, commit, leave the group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture()
def spawn(tmp_path: Path) -> Iterator[Callable[[str, Settings, str], Instance]]:
    started: list[Instance] = []

    def start(name: str, settings: Settings, group: str) -> Instance:
        inst = Instance(name, settings, tmp_path / f"shard-{name}", group)
        started.append(inst)  # registered before it is awaited: a failed start is stopped too
        inst.wait_up()
        return inst

    yield start
    for inst in started:  # on failure too: no processor outlives the test
        inst.stop(grace=15)


def shard_points(engine: Path, run_ids: list[str]) -> list[list[Any]]:
    """(run_id, metric, step, value) rows of a stopped instance's engine, read in a process of its own."""
    code = (
        "import json, sys; from runstream.storage.store import Store; "
        "rows = Store(sys.argv[1]).query_rows("
        "'SELECT run_id, metric, step, value FROM metric_points WHERE run_id IN {ids:Array(String)}', {'ids': json.loads(sys.argv[2])}); "
        "print(json.dumps([list(r) for r in rows]))"
    )
    out = subprocess.run([sys.executable, "-c", code, f"chdb://{engine}", json.dumps(run_ids)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows: list[list[Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def run_ids_covering_partitions(partitions: int, per_partition: int) -> list[str]:
    """Run ids (the Kafka key) that the producer's default partitioner spreads evenly."""
    slots = list(range(partitions))
    want = {p: per_partition for p in slots}
    ids: list[str] = []
    while any(want.values()):
        run_id = uuid.uuid4().hex[:20]
        p = DefaultPartitioner()(run_id.encode(), slots, slots)
        if want[p]:
            want[p] -= 1
            ids.append(run_id)
    return ids


def value(step: int, metric: int) -> float:
    return step * 0.5 + metric


class TrainingLoop(threading.Thread):
    """Logs step after step of every run at a steady pace until stopped."""

    def __init__(self, runs: list[Run], steps_per_second: float = STEPS_PER_SECOND) -> None:
        super().__init__(name="training-loop", daemon=True)
        self.runs = runs
        self.steps_per_second = steps_per_second
        self.steps = 0  # steps logged for every run
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        try:
            while not self._halt.is_set():
                for run in self.runs:
                    run.log_metrics({name: value(self.steps, j) for j, name in enumerate(METRICS)}, step=self.steps)
                self.steps += 1
                self._halt.wait(max(0.0, start + self.steps / self.steps_per_second - time.monotonic()))  # the pace of training
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self) -> int:
        self._halt.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, self.error
        for run in self.runs:
            assert run.flush(60)
        return self.steps


def test_two_processors_split_the_partitions_and_write_every_point_once_across_rebalances(
    home: Path, kafka_bootstrap: str, spawn: Callable[[str, Settings, str], Instance]
) -> None:
    settings = new_settings(home, kafka_bootstrap).with_(partitions=PARTITIONS)
    group = f"g-{settings.topic_prefix}"
    a = spawn("a", settings, group)
    exp = Experiment("scale-out", settings=settings)
    ids = run_ids_covering_partitions(PARTITIONS, RUNS_PER_PARTITION)
    runs = [exp.start_logging(name=f"shard-{i}", run_id=run_id, capture_output=False) for i, run_id in enumerate(ids)]
    loop = TrainingLoop(runs)
    loop.start()
    members = [a]
    try:
        wait_until(lambda: a.written() > 0, 60, what="instance a storing points")

        # b joins while the loop logs: the group rebalances and the partitions are split.
        joined_at = loop.steps
        b = spawn("b", settings, group)
        members.append(b)
        wait_until(lambda: b.written() > 0, 60, what=f"instance b storing points after joining (a wrote {a.written()})")
        a_after_join = a.written()
        wait_until(lambda: a.written() > a_after_join, 60, what="instance a still storing its share after the rebalance")

        # a leaves while the loop logs: its in-flight batch is written and committed, b takes over its partitions.
        leave_at = loop.steps
        a.stop()
        assert a.proc.returncode == 0, a.tail()
        left_at = loop.steps
        wait_until(lambda: loop.steps >= left_at + AFTER_LEAVE_STEPS, 30, what="steps logged after a left")
        b_before_takeover = b.written()
    except AssertionError as exc:  # what each instance logged is what tells a stall from a crash
        logs = "".join(f"\n--- processor {inst.name} (exit {inst.proc.poll()}) ---\n{inst.tail()}" for inst in members)
        raise AssertionError(f"{exc}{logs}") from exc
    finally:
        steps = loop.finish()
    total = len(ids) * len(METRICS) * steps
    stored_a = shard_points(a.engine, ids)
    wait_until(
        lambda: len(stored_a) + b.written() >= total,
        60,
        what=f"every point stored (a stored {len(stored_a)}, b wrote {b.written()}, of {total})",
    )
    for run in runs:
        run.complete()
    b.stop()
    stored_b = shard_points(b.engine, ids)
    print(
        f"{steps} steps x {len(ids)} runs x {len(METRICS)} metrics = {total:,} points; b joined at step {joined_at}, "
        f"a was stopped at step {leave_at} and had left by step {left_at}; shard a {len(stored_a):,} rows, shard b {len(stored_b):,} "
        f"(b had written {b_before_takeover:,} when the loop stopped)"
    )

    keys_a = {(r[0], r[1], r[2]) for r in stored_a}
    keys_b = {(r[0], r[1], r[2]) for r in stored_b}
    assert len(keys_a) == len(stored_a) and len(keys_b) == len(stored_b), "a point stored twice within a shard"
    assert not keys_a & keys_b, f"{len(keys_a & keys_b)} points stored by both instances, e.g. {sorted(keys_a & keys_b)[:5]}"
    assert stored_a and stored_b, "one instance stored nothing"
    assert len(stored_a) + len(stored_b) == total
    want = {(r, m, s) for r in ids for m in METRICS for s in range(steps)}
    assert keys_a | keys_b == want, f"missing {len(want - (keys_a | keys_b))}, unexpected {len((keys_a | keys_b) - want)}"
    for run_id, metric, step, stored in stored_a + stored_b:
        assert stored == value(step, METRICS.index(metric)), (run_id, metric, step, stored)
    # b stored points logged while a was still a member (the split), and after a left, every run's later steps (the takeover).
    assert any(r[2] < leave_at for r in stored_b), "b stored nothing logged before a left"
    assert {r[0] for r in stored_b if r[2] >= left_at} == set(ids), "b did not take over every partition after a left"
