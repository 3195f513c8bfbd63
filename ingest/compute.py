"""Compute targets: where a submitted script runs (the reference's "compute target").

A target takes `Job`s and runs each one's command with its environment in its
folder, reporting back through the job's `Reporter`: `running()` when it
starts, `output(stream, line)` for each line it prints, `exited(code)` at the
end (negative: killed by that signal). It must call them in that order, from
any thread. Everything else (the run's status events, the output log, the
upload of ./outputs, the final status from the exit code) is the reporter's
(ingest/submit.py), so a target only knows how to start and watch a process.

`LocalCompute` runs jobs as child processes of this one, at most `slots` at
a time on the machine; the rest wait in submission order (their runs show
Queued). Several processes submitting to the same target (two shells running
`runstream submit`) share its slots through `SlotFiles`: a ticket per job and a
lock file per slot under $RUNSTREAM_HOME/compute/<target>.

A remote target (Slurm, Kubernetes, Ray...) implements `ComputeTarget`:
`submit(job)` hands the job over and returns at once (e.g. `sbatch` a script
that runs `job.command` in a copy of `job.folder` with `job.env`), then
a watcher thread calls the reporter as the scheduler reports (`running()` when
the job leaves the queue, the log file's lines, `exited()` with the exit
code); `cancel(job)` asks the scheduler to stop it. A target is chosen by name:
`register_target(target)` in the submitting process, or an entry point in the
group `runstream.compute_targets` whose object is called with the name and
returns the target. A name with no target is a local one.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Protocol

from runstream.ingest.spool import _alive

log = logging.getLogger("runstream.client")


class Reporter(Protocol):
    """How a target tells the run what its job is doing."""

    def running(self) -> None: ...

    def output(self, stream: str, line: str) -> None: ...

    def exited(self, code: int) -> None: ...


@dataclass
class Job:
    """One submitted script: the command, its environment and folder, and its reporter."""

    run_id: str
    command: list[str]
    env: dict[str, str]
    folder: Path
    reporter: Reporter
    # Set by the target that runs it: how to stop it (cancel).
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    canceled: bool = False


class ComputeTarget(Protocol):
    """Somewhere jobs run."""

    name: str

    def submit(self, job: Job) -> None:
        """Take the job; return at once (it runs now or when there is room)."""

    def cancel(self, job: Job) -> None:
        """Stop the job: drop it if it waits, signal it (SIGTERM) if it runs."""


class SlotFiles:
    """A target's slots shared by the processes of one machine (one RUNSTREAM_HOME).

    A job takes a ticket (a file named by submission time) when it is submitted; the
    oldest ticket of a live process may take a free slot (an flock on slot-<i>.lock, which
    the kernel releases if the process dies), so jobs start in submission order across
    processes. Waiting polls every POLL_S: processes have no condition to wait on."""

    POLL_S = 0.1

    def __init__(self, folder: Path, slots: int) -> None:
        self.folder = folder
        self.slots = slots
        (folder / "tickets").mkdir(parents=True, exist_ok=True)

    def ticket(self, job_id: str) -> Path:
        path = self.folder / "tickets" / f"{time.time_ns():020d}-{os.getpid()}-{job_id}"
        path.touch()
        return path

    def _head(self) -> Path | None:
        for path in sorted((self.folder / "tickets").iterdir()):
            try:
                pid = int(path.name.split("-")[1])
            except (IndexError, ValueError):
                pid = -1
            if pid == os.getpid() or (pid > 0 and _alive(pid)):
                return path
            path.unlink(missing_ok=True)  # its process is gone
        return None

    def acquire(self, ticket: Path, canceled: Callable[[], bool]) -> IO[bytes]:
        """Block until `ticket` is the oldest and a slot is free; the slot's open lock file
        (close it to release). _Canceled if `canceled()` turns true meanwhile."""
        try:
            while True:
                if canceled():
                    raise _Canceled
                if self._head() == ticket:
                    for i in range(self.slots):
                        lock = open(self.folder / f"slot-{i}.lock", "ab")  # noqa: SIM115 - held while the job runs
                        try:
                            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except OSError:
                            lock.close()
                            continue
                        return lock
                time.sleep(self.POLL_S)
        finally:
            ticket.unlink(missing_ok=True)


class LocalCompute:
    """Jobs as child processes of this process, `slots` at a time, in submission order."""

    def __init__(self, name: str, slots: int | None = None, *, popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen) -> None:
        self.name = name
        self.slots = max(1, slots if slots is not None else int(os.environ.get("RUNSTREAM_LOCAL_SLOTS", "") or (os.cpu_count() or 1)))
        self._popen = popen
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: set[int] = set()  # id(job) of the running ones
        self._running: dict[int, Job] = {}
        self._threads: list[threading.Thread] = []
        self._tickets: dict[int, tuple[SlotFiles, Path]] = {}
        atexit.register(self.wait_all)

    def _slot_files(self, job: Job) -> SlotFiles:
        # The machine's state folder is the job's RUNSTREAM_HOME (ingest/childenv.py sets it).
        home = Path(job.env.get("RUNSTREAM_HOME") or ".runstream").resolve()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)
        return SlotFiles(home / "compute" / safe, self.slots)

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def submit(self, job: Job) -> None:
        slots = self._slot_files(job)
        with self._lock:
            self._tickets[id(job)] = (slots, slots.ticket(job.run_id))  # in order, under the lock
            self._waiting.append(job)
            self._start_ready()

    def cancel(self, job: Job) -> None:
        with self._lock:
            job.canceled = True
            if job in self._waiting:
                self._waiting.remove(job)
                _, ticket = self._tickets.pop(id(job), (None, None))
                if ticket is not None:
                    ticket.unlink(missing_ok=True)
                dropped = True
            else:
                dropped = False
                if job.process is not None and job.process.poll() is None:
                    job.process.send_signal(signal.SIGTERM)
        if dropped:  # never started: it ends as a signal would have ended it
            job.reporter.exited(-signal.SIGTERM)

    def cancel_all(self) -> None:
        """Cancel every job taken so far (queued ones never start, running ones get SIGTERM)."""
        with self._lock:
            jobs = list(self._waiting) + [j for j in self._running.values()]
        for job in jobs:
            self.cancel(job)

    def wait_all(self, timeout: float | None = None) -> None:
        """Wait for every job taken so far (the process's exit does: a submitted run is not
        left without its supervisor)."""
        with self._lock:
            pending = bool(self._waiting or self._active)
            if pending:
                log.warning("runstream: waiting for %d submitted run(s) on %s before exiting", len(self._waiting) + len(self._active), self.name)
            self._lock.wait_for(lambda: not self._waiting and not self._active, timeout)

    # --- under the lock ---
    def _start_ready(self) -> None:
        while self._waiting and len(self._active) < self.slots:
            job = self._waiting.popleft()
            self._active.add(id(job))
            self._running[id(job)] = job
            thread = threading.Thread(target=self._run, args=(job,), name=f"runstream-job-{job.run_id}", daemon=True)
            self._threads.append(thread)
            thread.start()

    # --- a job's thread ---
    def _run(self, job: Job) -> None:
        code = -1
        lock: IO[bytes] | None = None
        try:
            with self._lock:
                slots, ticket = self._tickets.pop(id(job))
            lock = slots.acquire(ticket, lambda: job.canceled)  # the machine-wide slot, in ticket order
            job.reporter.running()
            with self._lock:
                if job.canceled:
                    raise _Canceled
                job.process = self._popen(
                    job.command, cwd=job.folder, env=job.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            readers = [
                threading.Thread(target=_pump, args=(pipe, stream, job.reporter), daemon=True)
                for pipe, stream in ((job.process.stdout, "stdout"), (job.process.stderr, "stderr"))
            ]
            for reader in readers:
                reader.start()
            code = job.process.wait()
            for reader in readers:
                reader.join()
        except _Canceled:
            code = -signal.SIGTERM
        except Exception as exc:  # the interpreter is missing, the folder vanished...
            job.reporter.output("stderr", f"runstream: could not start {job.command[0]!r}: {exc}")
            code = 127
        finally:
            if lock is not None:
                lock.close()  # the slot is free for the next ticket, here or in another process
            try:
                job.reporter.exited(code)
            finally:
                with self._lock:
                    self._active.discard(id(job))
                    self._running.pop(id(job), None)
                    self._start_ready()
                    self._lock.notify_all()


class _Canceled(Exception):
    pass


def _pump(pipe: IO[bytes] | None, stream: str, reporter: Reporter) -> None:
    """The lines of one of the child's pipes, to the reporter, as they come."""
    if pipe is None:
        return
    with pipe:
        for raw in iter(pipe.readline, b""):
            reporter.output(stream, raw.decode(errors="replace").rstrip("\r\n"))


# --- choosing a target by name ---
_targets: dict[str, ComputeTarget] = {}
_targets_lock = threading.Lock()


def register_target(target: ComputeTarget) -> ComputeTarget:
    """Make `target` the one `compute_target=<its name>` submits to, in this process."""
    with _targets_lock:
        _targets[target.name] = target
    return target


def get_target(name: str) -> ComputeTarget:
    """The target named `name`: registered here, else from an entry point of the group
    `runstream.compute_targets`, else a new local one (kept for later submissions)."""
    with _targets_lock:
        target = _targets.get(name)
        if target is not None:
            return target
        for ep in entry_points(group="runstream.compute_targets"):
            if ep.name == name:
                target = ep.load()(name)
                break
        else:
            target = LocalCompute(name)
        _targets[name] = target
        return target
