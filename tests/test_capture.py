"""Output capture and wait_for_completion(show_output=True)."""

from __future__ import annotations

import sys
import threading

import httpx
import pytest

from runstream import Experiment
from runstream.config import Settings
from tests.conftest import Stack

# The subject is not storage: the embedded engine is enough (tests/conftest.py).
pytestmark = pytest.mark.one_engine


def test_stdout_and_stderr_become_output_log_lines(settings: Settings, stack: Stack) -> None:
    run = Experiment("capture", settings=settings).start_logging(capture_output=True)
    print("epoch 1: loss=0.5")
    print("epoch 2: loss=0.25", end="")  # a partial line is logged when the run ends
    sys.stderr.write("warning: lr is high\n")
    run.complete()
    assert not type(sys.stdout).__name__ == "_Tee"
    run.get_metrics()
    lines = httpx.get(f"{stack.api_url}/api/v1/runs/{run.id}/logs").json()["lines"]
    got = [(entry["stream"], entry["line"]) for entry in lines]
    assert ("stdout", "epoch 1: loss=0.5") in got
    assert ("stdout", "epoch 2: loss=0.25") in got
    assert ("stderr", "warning: lr is high") in got


def test_wait_for_completion_streams_the_output(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    run = Experiment("waiting", settings=settings).start_logging(capture_output=False)

    def train() -> None:
        for i in range(5):
            run.log_text("stdout", f"step {i}")
            run.log("loss", 1.0 / (i + 1))
            run.flush()
        run.complete()

    worker = threading.Thread(target=train)
    worker.start()
    details = run.wait_for_completion(show_output=True, poll=0.1, timeout=60)
    worker.join()
    assert details["status"] == "Completed"
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("step ")] == [f"step {i}" for i in range(5)]
