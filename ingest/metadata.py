"""Where and how a run executes: sent with its start (SPEC: Run lifecycle, metadata).

`run_metadata()` gives strings only (the runs table's `meta` map): the compute
target (RUNSTREAM_COMPUTE, default the host name), host, user, pid, Python
version and executable, command line, and, when the source folder is in git,
its commit, branch and whether the tree was dirty. The source folder is
RUNSTREAM_SOURCE_DIR (a submitted script's snapshot names its original), else
the folder of the running script, else the working directory.
"""

from __future__ import annotations

import functools
import getpass
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

GIT_TIMEOUT_S = 3.0


def compute_target() -> str:
    return os.environ.get("RUNSTREAM_COMPUTE") or socket.gethostname()


def source_dir() -> Path:
    configured = os.environ.get("RUNSTREAM_SOURCE_DIR")
    if configured:
        return Path(configured)
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c", "-m") else None
    if script is not None and script.is_file():
        return script.resolve().parent
    return Path.cwd()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in a container without a passwd entry
        return str(os.getuid()) if hasattr(os, "getuid") else ""


@functools.lru_cache(maxsize=16)
def git_info(folder: str) -> dict[str, str]:
    """commit, branch and dirty ("true"/"false") of the work tree holding `folder`; {} when
    it is not in git or git is missing. Cached: a process asks once per folder."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    info = {"git_commit": commit, "git_branch": git("rev-parse", "--abbrev-ref", "HEAD") or ""}
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        info["git_dirty"] = "true" if status else "false"
    return info


def run_metadata(source: Path | None = None) -> dict[str, str]:
    """This process's metadata for a run it starts."""
    folder = source or source_dir()
    meta = {
        "compute": compute_target(),
        "host": socket.gethostname(),
        "user": _user(),
        "pid": str(os.getpid()),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if sys.argv and sys.argv[0] else Path(sys.executable).name,
        "source_dir": str(folder),
    }
    meta.update(git_info(str(folder)))
    return meta
