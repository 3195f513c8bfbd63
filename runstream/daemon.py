"""Background processes runstream starts for development (the Kafka broker, the ClickHouse
server): whether a pid file names a live process of ours, stopping it, its log's tail, and
whether a port is taken. Standard library only.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def running_pid(pid_file: Path, marker: bytes) -> int | None:
    """The pid in `pid_file` when that process is alive and its command line has `marker`:
    a zombie, or a pid the system has since given to another program, is not ours."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:
        if marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except (OSError, IndexError):
        pass
    return pid


def _exiting(pid: int) -> bool:
    """Whether the process is still exiting: its command line is gone once its memory is
    released, but its files (the listening socket) close later; a zombie has closed them."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or no /proc: the command line check alone decides
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def terminate(pid: int, pid_file: Path, marker: bytes, timeout: float) -> None:
    """SIGTERM, wait up to `timeout` for the process to go (reaping it when it is our
    child, as after a failed start), then SIGKILL; the pid file goes either way."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if running_pid(pid_file, marker) is None and not _exiting(pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)


def log_tail(log_file: Path, n: int = 30) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
