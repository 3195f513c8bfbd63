"""A run ends when its process does (SPEC: Run lifecycle).

Runs still open when the interpreter exits are ended here, children before
their parents, with one flush for all of them:

- a normal exit (or `sys.exit(0)`): Completed;
- an uncaught exception: Failed, with the error and its traceback;
- `sys.exit(n)` with n != 0 (or a message): Failed, "SystemExit: n";
- SIGINT (KeyboardInterrupt) or SIGTERM: Canceled.

Python runs no exit code on SIGTERM, so while a run is open the process's
SIGTERM handler (if it is still the default, and only in the main thread)
notes the signal and raises KeyboardInterrupt: the training loop unwinds like
on Ctrl-C (its `finally` and `with` blocks run), and the interpreter then ends
by re-raising SIGINT, so a supervisor sees that a signal ended it. (A subclass
of KeyboardInterrupt would not do: CPython then exits with 1.)
RUNSTREAM_HANDLE_SIGTERM=0 leaves SIGTERM alone.

The exception is taken from `sys.excepthook` (wrapped, the previous hook still
prints it) and the exit code from `sys.exit` (wrapped: a bare
`raise SystemExit(3)` is not seen and ends the run Completed; a submitted run's
supervisor corrects that from the exit code). SIGKILL or a lost machine
leaves the run Running; readers show it Crashed once its heartbeats stop
(runstream.lifecycle).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, Protocol

from runstream.wire import MAX_STRING_VALUE


class Endable(Protocol):
    """What the exit hook needs from an open run."""

    def end_at_exit(self, status: str, error: str) -> None:
        """Queue the run's end (no flush: the hook flushes once for every run)."""

    def flush(self, timeout: float | None = ...) -> bool: ...


_lock = threading.Lock()
_open: dict[int, Endable] = {}  # by id(run), in start order: a child starts after its parent
_installed = False
_exc: BaseException | None = None
_exit_code: Any = None
_exit_called = False
_sigterm = False


def terminated() -> bool:
    """Whether a KeyboardInterrupt in flight came from SIGTERM (see the module docstring)."""
    return _sigterm


def track(run: Endable) -> None:
    """`run` is open: end it at exit unless it ends before."""
    with _lock:
        _install()
        _open[id(run)] = run


def untrack(run: Endable) -> None:
    with _lock:
        _open.pop(id(run), None)


def format_error(exc: BaseException, tb: TracebackType | None = None) -> str:
    """'Type: message' then the traceback, cut to the wire's limit from the middle of the
    traceback (its first line and its innermost frames are the useful ends)."""
    head = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    trace = "".join(traceback.format_exception(type(exc), exc, tb if tb is not None else exc.__traceback__))
    text = f"{head}\n\n{trace}"
    if len(text) > MAX_STRING_VALUE:
        keep = MAX_STRING_VALUE - len(head) - 8
        text = f"{head}\n\n...\n{trace[-keep:]}"
    return text[:MAX_STRING_VALUE]


def outcome() -> tuple[str, str]:
    """The status and error the open runs end with, from how the process is ending."""
    exc = _exc
    if isinstance(exc, KeyboardInterrupt):
        return "Canceled", "Terminated by SIGTERM" if _sigterm else "KeyboardInterrupt"
    if exc is not None:
        return "Failed", format_error(exc)
    if _exit_called and _exit_code not in (None, 0):
        return "Failed", f"SystemExit: {_exit_code}"
    return "Completed", ""


def end_open_runs() -> None:
    """End every open run (children first) with `outcome()`, then flush once."""
    with _lock:
        runs = list(_open.values())[::-1]
        _open.clear()
    if not runs:
        return
    status, error = outcome()
    for run in runs:
        try:
            run.end_at_exit(status, error)
        except Exception:  # one run's failure must not leave the others open
            pass
    timeout = float(os.environ.get("RUNSTREAM_EXIT_FLUSH_TIMEOUT", "30"))
    try:
        runs[0].flush(timeout)  # one shipper per process: this flushes every run's end
    except Exception:
        pass


# --- the hooks, installed once, when the first run opens ---
def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    previous_hook = sys.excepthook

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        global _exc
        _exc = exc
        previous_hook(exc_type, exc, tb)

    sys.excepthook = excepthook
    original_exit = sys.exit

    def exit(status: Any = None) -> None:  # noqa: A001 - stands in for sys.exit
        global _exit_code, _exit_called
        _exit_called, _exit_code = True, status
        original_exit(status)

    sys.exit = exit  # type: ignore[assignment]
    if os.environ.get("RUNSTREAM_HANDLE_SIGTERM", "1") != "0" and threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # not the main interpreter, or no signals here
            pass
    atexit.register(_at_exit)


def _on_sigterm(signum: int, frame: Any) -> None:
    global _sigterm
    # A second SIGTERM while the first unwinds (or while the exit flushes) ends the process.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _sigterm = True
    raise KeyboardInterrupt("SIGTERM")


def _at_exit() -> None:
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):
        pass
    end_open_runs()
