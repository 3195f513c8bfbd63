"""Submitting a script as a run: the reference's ScriptRunConfig and Experiment.submit.

    src = ScriptRunConfig(source_directory="./", script="train.py", arguments=["--lr", 0.1])
    run = Experiment("sweep").submit(src)      # returns at once, the run Queued
    run.wait_for_completion(show_output=True)  # the script's output as it prints it

`submit` snapshots the source folder (ingest/snapshot.py: .gitignore honoured,
a size cap) as the run's `snapshot.zip`, starts the run Queued, and hands a
`Job` to the compute target (ingest/compute.py): the script, under the chosen
interpreter, in a copy of the folder ($RUNSTREAM_HOME/runs/<run id>), with
the run as its context (RUNSTREAM_RUN_ID and this process's settings, see
ingest/childenv.py). `JobReporter` turns what the target reports into the
run: Running when it starts, each output line into the run's log (and to
local waiters), then the files under ./outputs and the end status from the
exit code: 0 Completed, killed by a signal (or 128+SIGINT/SIGTERM from a
shell) Canceled, anything else Failed with the script's last traceback from
its stderr. The script's own context run does not end itself at exit
(RUNSTREAM_SUBMITTED, ingest/lifecycle.py): its end is the supervisor's, after
./outputs is uploaded, so a run is never Completed without its files.

The returned `SubmittedRun` is this process's handle: the supervisor owns
its end, so complete()/fail() are refused and cancel() stops the script.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.errors import InputError
from runstream.ingest import lifecycle, snapshot
from runstream.ingest.childenv import child_env
from runstream.ingest.compute import ComputeTarget, Job, get_target
from runstream.ingest.metadata import compute_target, run_metadata
from runstream.ingest.run import Experiment, Run
from runstream.wire import MAX_STRING_VALUE

SNAPSHOT_NAME = "snapshot.zip"
CANCEL_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)


@dataclass
class ScriptRunConfig:
    """What to run: a script in a source folder, its arguments, where and under which Python.

    compute_target: a target's name (RUNSTREAM_COMPUTE, default the host name, is a local
    one) or a ComputeTarget; python: an interpreter path (a user-managed environment),
    default this process's; environment_variables: more variables for the script."""

    source_directory: str | os.PathLike[str] = "."
    script: str | None = None
    arguments: Sequence[Any] = ()
    compute_target: str | ComputeTarget | None = None
    python: str | os.PathLike[str] | None = None
    environment_variables: Mapping[str, str] = field(default_factory=dict)

    def command(self) -> list[str]:
        return [str(self.python or sys.executable), str(self.script), *(str(a) for a in self.arguments)]


def exit_status(code: int) -> tuple[str, str]:
    """The run's end from the script's exit code."""
    if code == 0:
        return "Completed", ""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return "Canceled", f"killed by {name}"
    if code in CANCEL_CODES:
        return "Canceled", f"exit code {code} (128 + {signal.Signals(code - 128).name})"
    return "Failed", f"exit code {code}"


def submitted_exit_code(run: SubmittedRun) -> int:
    """What `runstream submit --wait` exits with: the script's code (128 + N for signal N)."""
    code = run._reporter.exit_code
    if code is None:
        return 1
    return 128 - code if code < 0 else code


class JobReporter:
    """A job's news into its run (the compute target calls it; see compute.Reporter)."""

    def __init__(self, run: SubmittedRun, folder: Path) -> None:
        self.run = run
        self.folder = folder
        self.lines: list[tuple[str, str]] = []
        self.stderr_tail: deque[str] = deque(maxlen=200)
        self.exit_code: int | None = None
        self.changed = threading.Condition()

    def running(self) -> None:
        self.run._started()

    def output(self, stream: str, line: str) -> None:
        self.run.log_text(stream, line)
        with self.changed:
            self.lines.append((stream, line))
            self.changed.notify_all()
        if stream == "stderr":
            self.stderr_tail.append(line)

    def error(self, code: int, summary: str) -> str:
        """The run's error: the script's last traceback as ingest/lifecycle.py formats one
        (the exception line, then the traceback), else the summary and the stderr tail."""
        tail = list(self.stderr_tail)
        starts = [i for i, line in enumerate(tail) if line.startswith("Traceback (most recent call last):")]
        if starts:
            block = tail[starts[-1] :]
            text = block[-1] + "\n\n" + "\n".join(block)
        else:
            text = summary + ("\n\n" + "\n".join(tail[-20:]) if tail else "")
        return text if len(text) <= MAX_STRING_VALUE else text[: MAX_STRING_VALUE - 4] + "\n..."

    def exited(self, code: int) -> None:
        status, summary = exit_status(code)
        error = self.error(code, summary) if status == "Failed" else summary
        try:
            self.run._upload_outputs(self.folder / "outputs")
        finally:
            self.run._finish(status, error)
            with self.changed:
                self.exit_code = code
                self.changed.notify_all()


def submit(
    experiment: Experiment,
    config: ScriptRunConfig,
    *,
    name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> SubmittedRun:
    """Snapshot, start the run Queued, hand the job to its target; the run at once."""
    if not config.script:
        raise InputError("ScriptRunConfig needs a script (a path inside source_directory)")
    root = Path(config.source_directory).resolve()
    if not (root / config.script).is_file():
        raise InputError(f"script {config.script!r} is not a file in {str(root)!r}")
    files = snapshot.source_files(root)  # refuses an oversized folder before anything is sent
    target = config.compute_target if config.compute_target is not None and not isinstance(config.compute_target, str) else None
    target = target or get_target(str(config.compute_target or compute_target()))
    command = config.command()
    meta = run_metadata(root)
    meta.update({"compute": target.name, "command": shlex.join(command), "submitted_from": meta["host"]})
    run = SubmittedRun(experiment, new_id=run_id, name=name or Path(config.script).stem, tags=tags, status="Queued", meta=meta)
    folder = experiment.settings.home / "runs" / run.id
    snapshot.copy_tree(root, files, folder)
    with tempfile.TemporaryDirectory(prefix="runstream-snapshot-") as tmp:
        run.upload_file(SNAPSHOT_NAME, snapshot.write_zip(root, files, Path(tmp) / SNAPSHOT_NAME))
    env = child_env(
        experiment.settings,
        {
            "RUNSTREAM_RUN_ID": run.id,
            "RUNSTREAM_EXPERIMENT": experiment.name,
            "RUNSTREAM_PROJECT": experiment.project,
            "RUNSTREAM_COMPUTE": target.name,
            "RUNSTREAM_SOURCE_DIR": str(root),  # git metadata of the original, not of the copy
            "RUNSTREAM_CAPTURE_OUTPUT": "0",  # the supervisor captures the pipes
            "RUNSTREAM_SUBMITTED": "1",
            "PYTHONUNBUFFERED": "1",  # lines reach the log as they are printed
            **dict(config.environment_variables),
        },
    )
    reporter = JobReporter(run, folder)
    run._job, run._target, run._reporter = Job(run.id, command, env, folder, reporter), target, reporter
    target.submit(run._job)
    return run


class SubmittedRun(Run):
    """The submitting process's handle on a submitted run: its supervisor ends it."""

    _job: Job
    _target: ComputeTarget
    _reporter: JobReporter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lifecycle.untrack(self)  # its end is the script's exit, not this process's

    def _started(self) -> None:
        self._status = "Running"
        self._buffer.enqueue("run_status", {"status": "Running"})

    def _upload_outputs(self, outputs: Path) -> None:
        if outputs.is_dir():
            for path in sorted(p for p in outputs.rglob("*") if p.is_file()):
                try:
                    self.upload_file(f"outputs/{path.relative_to(outputs).as_posix()}", path)
                except Exception as exc:  # one file must not keep the run from ending
                    self.log_text("stderr", f"runstream: could not upload {path}: {exc}")

    def _finish(self, status: str, error: str) -> None:
        super()._end(status, error)

    def complete(self) -> None:
        raise InputError(f"run {self.id!r} was submitted: it ends when its script does (cancel() stops it)")

    def fail(self, error: BaseException | str | None = None) -> None:
        raise InputError(f"run {self.id!r} was submitted: it ends when its script does (cancel() stops it)")

    def cancel(self) -> None:
        """Stop the script (SIGTERM; a queued one never starts): the run ends Canceled."""
        self._target.cancel(self._job)

    def wait_for_completion(self, show_output: bool = False, *, poll: float = 0.5, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run ends; show_output prints the script's lines as it prints them
        (from the pipes here, not a round trip through the api). The run's details once the
        api has its end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = 0
        reporter = self._reporter
        while True:

            def news(seen: int = shown) -> bool:
                return len(reporter.lines) > seen or reporter.exit_code is not None

            with reporter.changed:
                reporter.changed.wait_for(news, poll)
                new, done = reporter.lines[shown:], reporter.exit_code is not None
            shown += len(new)
            if show_output:
                for stream, line in new:
                    print(line, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)
            if done and not new:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id} still {self._status} after {timeout}s")
        rest = None if deadline is None else max(0.1, deadline - time.monotonic())
        return super().wait_for_completion(show_output=False, poll=min(poll, 0.2), timeout=rest)
