"""SIGKILL the processor mid-stream and restart it: no loss, no duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from runstream import Experiment
from tests.conftest import free_port, new_settings, wait_until


def _start(home: Path, kafka: str, port: int, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RUNSTREAM_HOME": str(home),
        "RUNSTREAM_KAFKA": kafka,
        "RUNSTREAM_TOPIC_PREFIX": prefix,
        "RUNSTREAM_GROUP": "g-kill",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    env.pop("RUNSTREAM_CLICKHOUSE", None)
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen([sys.executable, "-m", "runstream.cli", "up", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _points(api: str, run_id: str) -> int | None:
    try:
        r = httpx.get(f"{api}/api/v1/runs/{run_id}", timeout=5)
    except httpx.HTTPError:
        return None
    return int(r.json()["points"]) if r.status_code == 200 else None


def test_sigkill_mid_stream_then_restart(tmp_path: Path, kafka_bootstrap: str) -> None:
    home = tmp_path / "killed-home"
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    settings = new_settings(home, kafka_bootstrap, api=api)
    log = tmp_path / "processor.log"
    proc = _start(home, kafka_bootstrap, port, settings.topic_prefix, log)
    try:
        wait_until(lambda: _healthy(api) or proc.poll() is not None, 60, what="processor up")
        assert proc.poll() is None, log.read_text()[-2000:]
        exp = Experiment("killed", settings=settings)
        runs = [exp.start_logging(name=f"kill-{i}") for i in range(4)]
        killed = False
        for step in range(20_000):
            for run in runs:
                run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 20_000}, step=step)
            if step % 2000 == 0:
                for run in runs:
                    run.flush()
            if not killed and step == 8000:
                wait_until(lambda: (_points(api, runs[0].id) or 0) > 0, 60, what="some points stored before the kill")
                proc.send_signal(signal.SIGKILL)  # no chance to finish a batch or commit
                proc.wait(10)
                killed = True
        for run in runs:
            run.complete()
        proc = _start(home, kafka_bootstrap, port, settings.topic_prefix, log)
        expected = 20_000 * 2
        wait_until(lambda: all(_points(api, r.id) == expected for r in runs), 120, what="every point after the restart")
        for run in runs:
            series = httpx.get(f"{api}/api/v1/runs/{run.id}/metrics/loss", timeout=10).json()
            assert series["count"] == 20_000 and series["steps"] == list(range(20_000))
            assert httpx.get(f"{api}/api/v1/runs/{run.id}", timeout=5).json()["status"] == "Completed"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        time.sleep(0.1)
