"""Capturing a run's stdout and stderr as output log lines.

The streams are teed: everything still reaches the terminal (or notebook), and
each complete line is also logged to the run with `log_text`. One run captures
at a time (the first one started with capture on); it releases the streams
when it ends.
"""

from __future__ import annotations

import sys
import threading
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runstream.ingest.run import Run

_lock = threading.Lock()
_owner: Run | None = None


class _Tee:
    def __init__(self, original: IO[str], run: Run, stream: str) -> None:
        self._original = original
        self._run = run
        self._stream = stream
        self._partial = ""
        self._local = threading.local()

    def write(self, text: str) -> int:
        written = self._original.write(text)
        if getattr(self._local, "busy", False):  # a line logged while logging: don't loop
            return written
        self._local.busy = True
        try:
            data = self._partial + text
            *lines, self._partial = data.split("\n")
            for line in lines:
                self._run.log_text(self._stream, line)
        except Exception:  # capturing must never break the user's prints
            pass
        finally:
            self._local.busy = False
        return written

    def flush(self) -> None:
        self._original.flush()

    def finish(self) -> None:
        if self._partial:
            try:
                self._run.log_text(self._stream, self._partial)
            except Exception:
                pass
            self._partial = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def start(run: Run) -> bool:
    """Tee stdout/stderr into `run` unless another run already does."""
    global _owner
    with _lock:
        if _owner is not None:
            return False
        _owner = run
        sys.stdout = _Tee(sys.stdout, run, "stdout")  # type: ignore[assignment]
        sys.stderr = _Tee(sys.stderr, run, "stderr")  # type: ignore[assignment]
        return True


def stop(run: Run) -> None:
    """Give the streams back (only those that are still our tees)."""
    global _owner
    with _lock:
        if _owner is not run:
            return
        _owner = None
        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            if isinstance(current, _Tee) and current._run is run:
                current.finish()
                setattr(sys, name, current._original)
