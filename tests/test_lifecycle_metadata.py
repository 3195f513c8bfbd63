"""Every run records where and how it ran (SPEC: Run lifecycle): compute target, host,
user, pid, Python, command line and the git commit, branch and dirty flag of its source
folder; stored, returned by the api and filterable there."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from runstream.config import Settings
from runstream.ingest.childenv import child_env
from runstream.ingest.metadata import git_info, run_metadata
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_a_script_in_a_dirty_git_tree_records_its_metadata_and_the_api_filters_on_it(tmp_path: Path, settings: Settings) -> None:
    src = tmp_path / "project"
    src.mkdir()
    _git(src, "init", "-q", "-b", "sweep-branch")
    (src / "train.py").write_text(
        "import os\nfrom runstream import Run\nrun = Run.get_context()\nrun.log('alpha', 0.5)\nprint(run.id, os.getpid(), flush=True)\n"
    )
    _git(src, "add", "train.py")
    _git(src, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "first")
    commit = _git(src, "rev-parse", "HEAD")
    (src / "train.py").write_text((src / "train.py").read_text() + "# edited, not committed\n")  # dirty

    env = child_env(settings, {"PYTHONPATH": str(ROOT), "RUNSTREAM_COMPUTE": "gpu-cluster-7", "RUNSTREAM_CAPTURE_OUTPUT": "0"})
    done = subprocess.run([sys.executable, "train.py", "--lr", "0.1"], cwd=src, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    run_id, pid = done.stdout.split()

    def details() -> dict:
        response = httpx.get(f"{settings.api}/api/v1/runs/{run_id}", timeout=10)
        return response.json() if response.status_code == 200 and response.json()["status"] == "Completed" else {}

    meta = wait_until(details, 30, what="the run stored")["meta"]
    assert meta["compute"] == "gpu-cluster-7"
    assert meta["host"] == socket.gethostname() and meta["user"]
    assert meta["pid"] == pid
    assert meta["python"] == platform.python_version()
    assert meta["command"].endswith("train.py --lr 0.1")
    assert meta["git_commit"] == commit and meta["git_branch"] == "sweep-branch" and meta["git_dirty"] == "true"
    assert Path(meta["source_dir"]) == src.resolve()

    def listed(**params: object) -> list[str]:
        return [r["id"] for r in httpx.get(f"{settings.api}/api/v1/runs", params=params, timeout=10).json()["runs"]]

    assert run_id in listed(compute="gpu-cluster-7")
    assert run_id in listed(meta=[f"git_commit={commit}", "git_dirty=true"])
    assert run_id not in listed(compute="another-target")
    assert run_id not in listed(meta=["git_dirty=false"])


def test_outside_git_the_metadata_has_no_git_fields_and_the_compute_target_defaults_to_the_host(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RUNSTREAM_COMPUTE", raising=False)
    monkeypatch.setenv("RUNSTREAM_SOURCE_DIR", str(tmp_path))
    meta = run_metadata()
    assert meta["compute"] == socket.gethostname()
    assert git_info(str(tmp_path)) == {} and not any(k.startswith("git_") for k in meta)
