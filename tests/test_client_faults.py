"""The client under a broker outage: logging keeps going, the spool replays, nothing is lost."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runstream import Experiment, Run
from runstream.ingest.shipper import Shipper
from runstream.kafka_broker import LocalBroker
from runstream.processor.consumer import Processor
from runstream.storage.store import Store
from tests.conftest import Stack, free_port, new_settings, wait_until


@pytest.fixture()
def outage_broker(tmp_path: Path):
    home = tmp_path / "home"
    bootstrap = f"127.0.0.1:{free_port()}"
    broker = LocalBroker(home, bootstrap)
    broker.start()
    try:
        yield home, bootstrap, broker
    finally:
        broker.stop()


def _count(store: Store, ids: list[str]) -> tuple[int, int]:
    row = store.query_rows("SELECT count(), uniqExact(run_id, metric, step) FROM metric_points WHERE run_id IN {ids:Array(String)}", {"ids": ids})[0]
    return int(row[0]), int(row[1])


@pytest.mark.one_engine  # the subject is the broker; storage only counts
def test_broker_stopped_while_logging_then_restarted_loses_nothing(outage_broker, store: Store, stack: Stack) -> None:
    home, bootstrap, broker = outage_broker
    settings = new_settings(home, bootstrap)
    proc = Processor(settings, store, group_id="g-outage", publish_live=False)
    stack.run(proc.start())
    shipper = Shipper(settings)
    exp = Experiment("outage", settings=settings)
    runs = [Run(exp, name=f"outage-{i}", shipper=shipper) for i in range(3)]
    ids = [r.id for r in runs]
    try:
        for step in range(1000):
            for run in runs:
                run.log("loss", float(step), step=step)
        assert shipper.flush(60)
        broker.stop()
        slowest = 0.0
        for step in range(1000, 3000):
            for run in runs:
                t = time.perf_counter()
                run.log("loss", float(step), step=step)
                slowest = max(slowest, time.perf_counter() - t)
            if step % 500 == 0:
                time.sleep(0.5)  # a training step's worth of time, so the shipper sees the outage
        assert slowest < 0.05, f"a log() call took {slowest * 1000:.1f} ms while the broker was down"
        wait_until(lambda: shipper.spooling and shipper.spooled_events > 0, 60, what="the shipper spooling to disk")
        assert any((home / "spool").rglob("*.seg"))
        broker.start()
        for step in range(3000, 4000):
            for run in runs:
                run.log("loss", float(step), step=step)
        for run in runs:
            run.complete()
        wait_until(lambda: _count(store, ids) == (12_000, 12_000), 120, what="every point after the outage")
        assert not shipper.spooling and shipper.replayed_events >= shipper.spooled_events > 0
        assert shipper.dropped_points == 0
    finally:
        shipper.close(5)
        stack.run(proc.stop())


def test_events_spooled_at_exit_are_replayed_by_the_next_process(outage_broker, store: Store, stack: Stack) -> None:
    home, bootstrap, broker = outage_broker
    settings = new_settings(home, bootstrap)
    broker.stop()
    script = textwrap.dedent(
        f"""
        from runstream import Experiment
        from runstream.config import Settings
        from pathlib import Path
        settings = Settings().with_(home=Path({str(home)!r}), kafka={bootstrap!r}, topic_prefix={settings.topic_prefix!r})
        run = Experiment("exit-spool", settings=settings).start_logging(name="exit")
        for step in range(5000):
            run.log("loss", float(step), step=step)
        print(run.id, flush=True)
        """
    )
    env = {**os.environ, "RUNSTREAM_EXIT_FLUSH_TIMEOUT": "3", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1]
    assert any((home / "spool").rglob("*.seg")), "the exiting process should have spooled its events"

    broker.start()
    proc = Processor(settings, store, group_id="g-exit", publish_live=False)
    stack.run(proc.start())
    shipper = Shipper(settings)  # a new process would do the same on its first run
    try:
        assert shipper.spooling
        wait_until(lambda: _count(store, [run_id]) == (5000, 5000), 120, what="the spooled points of the exited process")
        wait_until(lambda: not any((home / "spool").rglob("*.seg")), 30, what="the spool emptied")
    finally:
        shipper.close(5)
        stack.run(proc.stop())
