"""Submitting a script (SPEC: Submitting a script), on the real broker, engine and api.

The reference's ScriptRunConfig example as written (train.py calling
Run.get_context(), mylib.py giving the alphas, models saved to ./outputs,
no complete()) is submitted from a folder and must end Completed with 20
alphas, 20 mse values, 20 model files and the snapshot, while
wait_for_completion(show_output=True) prints every "alpha is ..." line as the
script runs. Three scripts on a one-slot target run one after the other in
submission order, the rest Queued; a failing and a canceled script end Failed
and Canceled; `runstream submit` does the same from a shell.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from runstream import Experiment, ScriptRunConfig
from runstream.config import Settings
from runstream.ingest.childenv import child_env
from runstream.ingest.compute import LocalCompute
from runstream.ingest.snapshot import SnapshotTooLarge
from tests.conftest import wait_until

pytestmark = pytest.mark.one_engine  # the subject is the client's supervision; storage is read the same way on both

ROOT = Path(__file__).resolve().parent.parent

# The reference's example, as users write it (only the import names runstream).
TRAIN_PY = """\
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import train_test_split
from runstream import Run
import os
import numpy as np
import mylib
import joblib

os.makedirs('./outputs', exist_ok=True)

X, y = load_diabetes(return_X_y=True)

run = Run.get_context()

X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
data = {"train": {"X": X_train, "y": y_train},
        "test": {"X": X_test, "y": y_test}}

# list of numbers from 0.0 to 1.0 with a 0.05 interval
alphas = mylib.get_alphas()

for alpha in alphas:
    # Use Ridge algorithm to create a regression model
    reg = Ridge(alpha=alpha)
    reg.fit(data["train"]["X"], data["train"]["y"])

    preds = reg.predict(data["test"]["X"])
    mse = mean_squared_error(preds, data["test"]["y"])
    run.log('alpha', alpha)
    run.log('mse', mse)

    model_file_name = 'ridge_{0:.2f}.pkl'.format(alpha)
    # save model in the outputs folder so it automatically get uploaded
    with open(model_file_name, "wb") as file:
        joblib.dump(value=reg, filename=os.path.join('./outputs/', model_file_name))

    print('alpha is {0:.2f}, and mse is {1:0.2f}'.format(alpha, mse))
"""

MYLIB_PY = """\
import numpy as np


def get_alphas():
    # list of numbers from 0.0 to 1.0 with a 0.05 interval
    return np.arange(0.0, 1.0, 0.05)
"""


@pytest.fixture()
def client_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The submitted scripts import runstream from this checkout and log to the session stack;
    whatever a failed test leaves running is canceled (this process waits for it at exit)."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    yield settings
    for target in TARGETS:
        target.cancel_all()
    TARGETS.clear()


TARGETS: list[LocalCompute] = []


def _target(name: str, slots: int) -> LocalCompute:
    TARGETS.append(LocalCompute(f"{name}-{uuid.uuid4().hex[:6]}", slots=slots))
    return TARGETS[-1]


class Recorder(io.TextIOBase):
    """Stands in for sys.stdout: each line with the time it was printed, and a hook."""

    def __init__(self, on_line: Any = None) -> None:
        self.lines: list[tuple[float, str]] = []
        self.on_line = on_line
        self._partial = ""

    def write(self, text: str) -> int:
        data = self._partial + text
        *lines, self._partial = data.split("\n")
        for line in lines:
            self.lines.append((time.time(), line))
            if self.on_line is not None:
                self.on_line(line)
        return len(text)


def _details(settings: Settings, run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{settings.api}/api/v1/runs/{run_id}", timeout=10)
    return response.json() if response.status_code == 200 else {}


def test_the_reference_scriptrunconfig_example_submitted_ends_completed_with_its_metrics_models_and_snapshot(
    tmp_path: Path, client_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = client_env
    src = tmp_path / "sweep"
    src.mkdir()
    (src / "train.py").write_text(TRAIN_PY)
    (src / "mylib.py").write_text(MYLIB_PY)
    (src / ".gitignore").write_text("data/\n*.tmp\n")
    (src / "data").mkdir()
    (src / "data" / "big.bin").write_bytes(b"\0" * 100_000)  # ignored: not in the snapshot
    (src / "scratch.tmp").write_text("ignored too")
    # The interpreter as a user-managed environment (python=): the real one, then a hold until
    # the test has seen every line, so "while the script ran" does not depend on timing.
    go = tmp_path / "go"
    wrapper = tmp_path / "python-env"
    wrapper.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\ncode=$?\nwhile [ ! -f "{go}" ]; do sleep 0.02; done\nexit $code\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)

    target = _target("local", 2)
    exp = Experiment("submit-sweep", settings=settings)
    run = exp.submit(ScriptRunConfig(source_directory=src, script="train.py", compute_target=target, python=str(wrapper)))
    assert run.status in ("Queued", "Running")
    alpha_lines: list[str] = []

    def on_line(line: str) -> None:
        if line.startswith("alpha is "):
            alpha_lines.append(line)
            assert run.status == "Running" and run._job.process is not None and run._job.process.poll() is None, "the job had ended"
            if len(alpha_lines) == 20:
                go.touch()  # every line was shown while the job ran; now let it end

    recorder = Recorder(on_line)
    monkeypatch.setattr(sys, "stdout", recorder)
    details = run.wait_for_completion(show_output=True, timeout=120)
    monkeypatch.undo()

    assert details["status"] == "Completed", details
    alphas = np.arange(0.0, 1.0, 0.05)
    assert [line.split(",")[0] for line in alpha_lines] == [f"alpha is {a:.2f}" for a in alphas]
    assert all(t < details["ended_at"] for t, line in recorder.lines if line.startswith("alpha is "))
    metrics = run.get_metrics()
    assert np.allclose(metrics["alpha"], alphas) and len(metrics["mse"]) == 20
    assert all(2000 < m < 6000 for m in metrics["mse"]) and abs(metrics["mse"][0] - 3424.3) < 1  # the reference's first mse
    names = run.get_file_names()
    assert sorted(n for n in names if n.startswith("outputs/")) == [f"outputs/ridge_{a:.2f}.pkl" for a in alphas]
    assert "snapshot.zip" in names and len(names) == 21
    run.download_file("snapshot.zip", tmp_path / "snap.zip")
    assert sorted(zipfile.ZipFile(tmp_path / "snap.zip").namelist()) == [".gitignore", "mylib.py", "train.py"]
    meta = details["meta"]
    assert meta["compute"] == target.name and meta["command"].endswith("train.py") and meta["pid"] != str(os.getpid())
    logged = [e["line"] for e in httpx.get(f"{settings.api}/api/v1/runs/{run.id}/logs", timeout=10).json()["lines"]]
    assert [line for line in logged if line.startswith("alpha is ")] == alpha_lines  # the output log has them too


WAIT_FOR_FILE = """\
import os, sys, time
from runstream import Run
run = Run.get_context()
run.log("started", 1)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
print("done", sys.argv[1])
"""


def test_three_scripts_on_a_one_slot_target_run_in_order_the_rest_queued(tmp_path: Path, client_env: Settings) -> None:
    settings = client_env
    src = tmp_path / "wait"
    src.mkdir()
    (src / "wait.py").write_text(WAIT_FOR_FILE)
    target = _target("one-slot", 1)
    exp = Experiment("submit-queue", settings=settings)
    gos = [tmp_path / f"go-{i}" for i in range(3)]
    runs = [exp.submit(ScriptRunConfig(src, "wait.py", arguments=[go], compute_target=target), name=f"job-{i}") for i, go in enumerate(gos)]

    def statuses() -> list[str]:
        return [_details(settings, r.id).get("status", "") for r in runs]

    expected = [
        ["Running", "Queued", "Queued"],
        ["Completed", "Running", "Queued"],
        ["Completed", "Completed", "Running"],
        ["Completed", "Completed", "Completed"],
    ]
    for step, want in enumerate(expected):
        wait_until(lambda want=want: statuses() == want, 60, what=f"statuses {want}")
        assert target.active == (1 if step < 3 else 0) and target.queued == max(0, 2 - step)
        if step < 3:
            gos[step].touch()
    listed = httpx.get(f"{settings.api}/api/v1/runs", params={"compute": target.name, "order_by": "created_at"}, timeout=10).json()
    assert [r["id"] for r in listed["runs"]] == [r.id for r in runs]


def test_a_failing_script_fails_with_its_traceback_and_a_canceled_one_is_canceled(tmp_path: Path, client_env: Settings) -> None:
    settings = client_env
    src = tmp_path / "bad"
    src.mkdir()
    (src / "bad.py").write_text("from runstream import Run\nrun = Run.get_context()\nrun.log('x', 1)\nraise RuntimeError('diverged')\n")
    (src / "wait.py").write_text(WAIT_FOR_FILE)
    target = _target("local", 2)
    exp = Experiment("submit-ends", settings=settings)
    bad = exp.submit(ScriptRunConfig(src, "bad.py", compute_target=target))
    waiting = exp.submit(ScriptRunConfig(src, "wait.py", arguments=[tmp_path / "never"], compute_target=target))
    details = bad.wait_for_completion(timeout=60)
    assert details["status"] == "Failed"
    assert details["error"].startswith("RuntimeError: diverged") and "Traceback" in details["error"]  # the script's own, kept
    assert bad.get_metrics() == {"x": 1.0}
    wait_until(lambda: _details(settings, waiting.id).get("status") == "Running", 30, what="the waiting script running")
    waiting.cancel()
    details = waiting.wait_for_completion(timeout=60)
    assert details["status"] == "Canceled"
    with pytest.raises(ValueError, match="submitted"):
        waiting.complete()


def test_snapshot_over_the_cap_is_refused_before_anything_is_sent(tmp_path: Path, client_env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "big"
    src.mkdir()
    (src / "train.py").write_text("print(1)\n")
    (src / "weights.bin").write_bytes(b"\1" * 50_000)
    monkeypatch.setenv("RUNSTREAM_SNAPSHOT_MAX_BYTES", "10000")
    with pytest.raises(SnapshotTooLarge, match="weights.bin"):
        Experiment("submit-cap", settings=client_env).submit(ScriptRunConfig(src, "train.py"))


def test_runstream_submit_wait_streams_the_output_and_exits_with_the_result_and_without_wait_returns_at_once(
    tmp_path: Path, client_env: Settings
) -> None:
    settings = client_env
    src = tmp_path / "cli"
    src.mkdir()
    (src / "train.py").write_text(
        textwrap.dedent(
            """
            import sys
            from runstream import Run
            run = Run.get_context()
            for i in range(3):
                run.log("loss", 1.0 / (i + 1))
                print("epoch", i, flush=True)
            sys.exit(int(sys.argv[1]))
            """
        )
    )
    env = child_env(settings, {"PYTHONPATH": str(ROOT)})
    cli = [sys.executable, "-m", "runstream.cli", "submit", "--experiment", "submit-cli", "--compute", "cli-local"]
    waited = subprocess.run([*cli, "--wait", "--name", "ok", "train.py", "0"], cwd=src, env=env, capture_output=True, text=True, timeout=120)
    assert waited.returncode == 0, waited.stderr
    assert [line for line in waited.stdout.splitlines() if line.startswith("epoch")] == ["epoch 0", "epoch 1", "epoch 2"]
    failed = subprocess.run([*cli, "--wait", "train.py", "4"], cwd=src, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 4 and "Failed" in failed.stderr

    detached = subprocess.run([*cli, "--name", "detached", "train.py", "0"], cwd=src, env=env, capture_output=True, text=True, timeout=60)
    assert detached.returncode == 0, detached.stderr
    run_id = detached.stdout.strip()
    done = wait_until(lambda: (d := _details(settings, run_id)).get("status") == "Completed" and d, 60, what="the detached run completed")
    assert done["name"] == "detached" and done["experiment"] == "submit-cli" and done["meta"]["compute"] == "cli-local"
    assert httpx.get(f"{settings.api}/api/v1/runs/{run_id}/metrics", timeout=10).json()["loss"] == [1.0, 0.5, 1.0 / 3]


def test_a_process_that_submits_and_exits_waits_for_its_run_which_ends_with_its_outputs(tmp_path: Path, client_env: Settings) -> None:
    settings = client_env
    src = tmp_path / "job"
    src.mkdir()
    (src / "job.py").write_text("import os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/result.txt', 'w').write('42')\nprint('wrote it')\n")
    submitter = textwrap.dedent(
        f"""
        from runstream import Experiment, ScriptRunConfig
        run = Experiment("submit-exit").submit(ScriptRunConfig({str(src)!r}, "job.py"))
        print(run.id, flush=True)
        """
    )  # and exits at once: its exit waits for the run it supervises
    env = child_env(settings, {"PYTHONPATH": str(ROOT)})
    done = subprocess.run([sys.executable, "-c", submitter], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    details = wait_until(lambda: (d := _details(settings, run_id)).get("status") == "Completed" and d, 30, what="the run completed")
    files = [f["path"] for f in httpx.get(f"{settings.api}/api/v1/runs/{run_id}/files", timeout=10).json()]
    assert "outputs/result.txt" in files and "snapshot.zip" in files, files
    assert httpx.get(f"{settings.api}/api/v1/runs/{run_id}/files/outputs/result.txt", timeout=10).text == "42"
    assert details["error"] is None


def test_two_shells_submitting_to_a_one_slot_target_share_its_slot_in_order(tmp_path: Path, client_env: Settings) -> None:
    settings = client_env
    src = tmp_path / "shells"
    src.mkdir()
    (src / "wait.py").write_text(WAIT_FOR_FILE)
    target = f"shared-{uuid.uuid4().hex[:6]}"
    env = child_env(settings, {"PYTHONPATH": str(ROOT), "RUNSTREAM_LOCAL_SLOTS": "1"})
    gos = [tmp_path / "go-0", tmp_path / "go-1"]
    ids = []
    try:
        for i, go in enumerate(gos):  # two detached supervisors: two processes, one slot between them
            cli = [sys.executable, "-m", "runstream.cli", "submit", "--experiment", "submit-shells", "--compute", target, "--name", f"shell-{i}"]
            done = subprocess.run([*cli, "wait.py", str(go)], cwd=src, env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            ids.append(done.stdout.strip())
            if i == 0:  # the first takes the slot before the second is submitted
                wait_until(lambda: _details(settings, ids[0]).get("status") == "Running", 60, what="the first running")

        def statuses() -> list[str]:
            return [_details(settings, run_id).get("status", "") for run_id in ids]

        wait_until(lambda: statuses() == ["Running", "Queued"], 60, what="the second queued behind the first")
        gos[0].touch()
        wait_until(lambda: statuses() == ["Completed", "Running"], 60, what="the second running once the first ended")
        gos[1].touch()
        wait_until(lambda: statuses() == ["Completed", "Completed"], 60, what="both completed")
    finally:
        for go in gos:
            go.touch()
