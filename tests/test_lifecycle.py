"""A run ends when its process ends (SPEC: Run lifecycle), on the real broker, engine and api.

Each case is a real script in a subprocess that never calls complete(): it logs,
then returns, raises, calls sys.exit(3), is stopped with SIGTERM, or is killed
with SIGKILL. Everything logged before the end must be stored, and the status
must say how the process ended; a killed run is shown Crashed once its
heartbeats stop (RUNSTREAM_CRASH_AFTER_S, shortened here) and Running again if
they resume (SIGSTOP, then SIGCONT), in the api and over /ws.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from runstream import Experiment, Run
from runstream.config import Settings
from runstream.ingest.childenv import child_env
from tests.conftest import Stack, wait_until

ROOT = Path(__file__).resolve().parent.parent
PRELUDE = "import sys, time\nfrom runstream import Experiment, Run\n"


def _start(tmp_path: Path, settings: Settings, body: str, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / f"script-{uuid.uuid4().hex[:6]}.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    environ = child_env(settings, {"PYTHONPATH": str(ROOT), "RUNSTREAM_CAPTURE_OUTPUT": "0", **env})
    return subprocess.Popen([sys.executable, str(script)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ids(proc: subprocess.Popen[str]) -> list[str]:
    """The run ids the script prints on its first line (it prints them once it has flushed)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"the script printed nothing; stderr: {proc.stderr.read() if proc.stderr else ''}"
    return line.split()


def _details(settings: Settings, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{settings.api}/api/v1/runs/{run_id}", timeout=10)
    return response.json() if response.status_code == 200 else {}


def _ended(settings: Settings, run_id: str, timeout: float = 30) -> dict[str, Any]:
    return wait_until(lambda: (d := _details(settings, run_id)).get("ended_at") and d, timeout, what=f"run {run_id} ended")


def _points(settings: Settings, run_id: str) -> dict[str, Any]:
    metrics: dict[str, Any] = httpx.get(f"{settings.api}/api/v1/runs/{run_id}/metrics", timeout=10).json()
    return metrics


def test_normal_exit_without_complete_is_completed(tmp_path: Path, settings: Settings) -> None:
    # The reference's submitted-script shape: Run.get_context() on RUNSTREAM_RUN_ID, no complete().
    run_id = f"ctx-{uuid.uuid4().hex[:10]}"
    proc = _start(
        tmp_path,
        settings,
        """
        run = Run.get_context()
        for i in range(20):
            run.log("alpha", i * 0.05)
        print(run.id, flush=True)
        """,
        RUNSTREAM_RUN_ID=run_id,
        RUNSTREAM_EXPERIMENT="lifecycle",
    )
    assert _ids(proc) == [run_id]
    assert proc.wait(60) == 0
    details = _ended(settings, run_id)
    assert details["status"] == "Completed" and details["error"] is None
    assert details["experiment"] == "lifecycle"
    assert len(_points(settings, run_id)["alpha"]) == 20


def test_uncaught_exception_fails_the_run_and_its_open_child_with_the_traceback(tmp_path: Path, settings: Settings) -> None:
    proc = _start(
        tmp_path,
        settings,
        """
        run = Experiment("lifecycle").start_logging(name="raises")
        child = run.child_run("fold-1")
        for i in range(100):
            run.log("loss", float(i))
            child.log("acc", i / 100)
        run.log_text("stdout", "about to fail")
        print(run.id, child.id, flush=True)

        def train():
            raise ValueError("boom at step 100")

        train()
        """,
    )
    run_id, child_id = _ids(proc)
    assert proc.wait(60) == 1
    assert proc.stderr is not None and "ValueError: boom at step 100" in proc.stderr.read()  # the previous excepthook still printed it
    details, child = _ended(settings, run_id), _ended(settings, child_id)
    assert details["status"] == "Failed" and child["status"] == "Failed"
    error = details["error"]
    assert error.startswith("ValueError: boom at step 100") and "Traceback (most recent call last)" in error and "in train" in error
    assert len(_points(settings, run_id)["loss"]) == 100 and len(_points(settings, child_id)["acc"]) == 100
    logs = httpx.get(f"{settings.api}/api/v1/runs/{run_id}/logs", timeout=10).json()["lines"]
    assert [entry["line"] for entry in logs] == ["about to fail"]


def test_sys_exit_3_fails_the_run(tmp_path: Path, settings: Settings) -> None:
    proc = _start(
        tmp_path,
        settings,
        """
        run = Run.get_context()  # no RUNSTREAM_RUN_ID: an interactive run, left open
        run.log_list("Fibonacci", [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89])
        print(run.id, flush=True)
        sys.exit(3)
        """,
    )
    (run_id,) = _ids(proc)
    assert proc.wait(60) == 3
    details = _ended(settings, run_id)
    assert details["status"] == "Failed" and details["error"] == "SystemExit: 3"
    assert _points(settings, run_id)["Fibonacci"] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]


def test_sigterm_cancels_the_run_and_keeps_what_it_logged(tmp_path: Path, settings: Settings) -> None:
    proc = _start(
        tmp_path,
        settings,
        """
        run = Experiment("lifecycle").start_logging(name="terminated")
        for i in range(200):
            run.log("loss", 1.0 / (i + 1))
        run.flush()
        print(run.id, flush=True)
        step = 0
        while True:  # a training loop that never ends on its own
            run.log("tick", float(step))
            step += 1
            time.sleep(0.01)
        """,
    )
    (run_id,) = _ids(proc)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    assert code == -signal.SIGINT, "the process must still end as a signal ended it (Python re-raises SIGINT)"
    details = _ended(settings, run_id)
    assert details["status"] == "Canceled" and details["error"] == "Terminated by SIGTERM"
    metrics = _points(settings, run_id)
    assert len(metrics["loss"]) == 200
    # Every tick logged before the signal arrived is stored: a gap-free 0..n-1.
    ticks = metrics.get("tick", [])
    ticks = ticks if isinstance(ticks, list) else [ticks]
    assert ticks == [float(i) for i in range(len(ticks))]


@pytest.mark.one_engine  # the subject is the heartbeat rule; both engines read it through the same SQL
def test_killed_run_is_crashed_after_its_heartbeats_stop_and_running_again_when_they_resume(
    tmp_path: Path, settings: Settings, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The api and processor read the threshold on each use: 3 s here instead of 120 s, with
    # heartbeats every 0.3 s, so a live run stays well inside it.
    monkeypatch.setenv("RUNSTREAM_CRASH_AFTER_S", "3")
    proc = _start(
        tmp_path,
        settings,
        """
        run = Experiment("lifecycle").start_logging(name="killed")
        for i in range(300):
            run.log("loss", float(i))
        run.flush()
        print(run.id, flush=True)
        while True:
            time.sleep(1)
        """,
        RUNSTREAM_HEARTBEAT_S="0.3",
    )
    (run_id,) = _ids(proc)
    try:
        wait_until(lambda: _details(settings, run_id).get("status") == "Running", 30, what="run Running")
        with connect(settings.api.replace("http://", "ws://") + "/ws", open_timeout=10) as ws:
            ws.send(json.dumps({"subscribe": {"run": run_id}}))

            def pushed_status(want: str, timeout: float = 20) -> None:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
                    for item in msg["updates"] if msg.get("type") == "updates" else [msg]:
                        if item.get("run") == run_id and item.get("status") == want:
                            return
                raise AssertionError(f"/ws never pushed {want}")

            os.kill(proc.pid, signal.SIGSTOP)  # heartbeats stop, the process is not gone
            pushed_status("Crashed")
            assert _details(settings, run_id)["status"] == "Crashed"
            listed = httpx.get(f"{settings.api}/api/v1/runs", params={"status": "Crashed", "experiment": "lifecycle"}, timeout=10).json()
            assert run_id in [r["id"] for r in listed["runs"]]
            os.kill(proc.pid, signal.SIGCONT)  # they resume
            pushed_status("Running")
            assert _details(settings, run_id)["status"] == "Running"
            proc.kill()  # SIGKILL: no exit code runs at all
            proc.wait(30)
            pushed_status("Crashed")
        details = _details(settings, run_id)
        assert details["status"] == "Crashed" and details["ended_at"] is None
        assert len(_points(settings, run_id)["loss"]) == 300
        assert details["meta"]["heartbeat_s"] == "0.3"
        # A writer that never promised heartbeats (the gateway, an MLflow client) is not
        # shown Crashed however long it is quiet.
        quiet = f"quiet-{uuid.uuid4().hex[:8]}"
        event = {"v": 1, "id": f"{quiet}:1", "kind": "run_start", "run": quiet, "project": "default", "ts": time.time() - 600}
        event["experiment"] = "lifecycle"
        assert httpx.post(f"{settings.api}/api/v1/events", json={"events": [event]}, timeout=10).status_code == 202
        assert wait_until(lambda: _details(settings, quiet).get("status"), 30, what="the quiet run stored") == "Running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_read_only_handle_on_a_completed_run_changes_nothing(settings: Settings, tmp_path: Path) -> None:
    exp = Experiment("lifecycle-handles", settings=settings)
    run = exp.start_logging(name="finished", tags={"k": "v"})
    for i in range(5):
        run.log("mse", 10.0 - i)
    child = run.child_run("fold-1")
    child.log("acc", 0.5)
    child.complete()
    (tmp_path / "m.txt").write_text("weights")
    run.upload_file("outputs/model.txt", tmp_path / "m.txt")
    run.complete()
    before = wait_until(
        lambda: (d := _details(settings, run.id)).get("events") == run.events_sent and d["status"] == "Completed" and d, 30, what="all events stored"
    )

    handle = Run(exp, run.id)
    assert handle.readonly and handle.status == "Completed"
    assert handle.get_details()["name"] == "finished"
    assert handle.get_metrics() == {"mse": [10.0, 9.0, 8.0, 7.0, 6.0]}
    assert [c.id for c in handle.get_children()] == [child.id] and handle.get_children()[0].status == "Completed"
    assert handle.get_file_names() == ["outputs/model.txt"]
    handle.download_file("outputs/model.txt", tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_text() == "weights"
    assert handle.wait_for_completion(show_output=True, timeout=10)["status"] == "Completed"
    html = handle._repr_html_()  # a notebook cell showing the handle: the stored run
    assert "<td>Completed</td>" in html and "<td>finished</td>" in html and f'href="{settings.api}/#/runs/{run.id}"' in html
    assert "<td>lifecycle-handles</td>" in run._repr_html_() and "<td>Completed</td>" in run._repr_html_()
    by_id = Run.from_id(run.id, settings=settings)
    assert by_id.experiment.name == "lifecycle-handles" and by_id.name == "finished"
    with pytest.raises(ValueError, match="read-only"):
        handle.log("mse", 1.0)
    with pytest.raises(ValueError, match="read-only"):
        handle.complete()
    # Nothing was sent: the handle has no shipper and made no event; the row is the same
    # (name, status, end time, tags, event count).
    assert handle.events_sent == 0 and not hasattr(handle, "_shipper")
    after = _details(settings, run.id)
    assert after == before
