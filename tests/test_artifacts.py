"""Artifacts never raise into the training loop (SPEC: Client), on the real broker, engine and api.

upload_file/log_image put the bytes on local disk and return; a background
thread uploads them with retries. With the api down a script uploads 20
files without an exception and they are all there once the api is back; a
large file streams; upload_folder and log_image(plot=) land as files and
images; files a process could not upload before it exited are uploaded, with
their events, by the next process.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runstream import Experiment
from runstream.config import Settings
from runstream.ingest.childenv import child_env
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.one_engine  # the subject is the client's spool and the api's upload; storage only lists files

ROOT = Path(__file__).resolve().parent.parent


class Forwarder:
    """A TCP port that forwards to the api once started: the api 'comes back' on it."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.sock: socket.socket | None = None

    def start(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.sock is not None
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()


@pytest.fixture()
def down_api(settings: Settings) -> Iterator[tuple[Forwarder, str]]:
    """An api url where nothing answers until the forwarder starts."""
    port = free_port()
    api = httpx.URL(settings.api)
    forwarder = Forwarder(port, (api.host, api.port or 80))
    try:
        yield forwarder, f"http://127.0.0.1:{port}"
    finally:
        forwarder.stop()


def _files(settings: Settings, run_id: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{settings.api}/api/v1/runs/{run_id}/files", timeout=10)
    return {f["path"]: f for f in response.json()} if response.status_code == 200 else {}


def test_api_down_while_a_script_uploads_20_files_no_exception_and_all_20_there_once_it_is_back(
    tmp_path: Path, settings: Settings, down_api: tuple[Forwarder, str]
) -> None:
    forwarder, url = down_api
    script = tmp_path / "uploads.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from pathlib import Path
            from runstream import Experiment
            run = Experiment("artifacts").start_logging(name="api-down")
            slowest = 0.0
            for i in range(20):
                path = Path(f"model_{i}.bin")
                path.write_bytes(bytes([i]) * (1000 + i))
                t0 = time.perf_counter()
                run.upload_file(f"outputs/model_{i}.bin", str(path))
                slowest = max(slowest, time.perf_counter() - t0)
                run.log("step", i)
            print(run.id, f"{slowest:.4f}", flush=True)
            sys.stdin.readline()  # the test brings the api back, then says so
            print("flushed", run.flush(timeout=60), flush=True)
            """
        )
    )
    env = child_env(settings.with_(api=url), {"PYTHONPATH": str(ROOT), "RUNSTREAM_CAPTURE_OUTPUT": "0"})
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        first = proc.stdout.readline().split()
        assert len(first) == 2, proc.stderr.read()
        run_id, slowest = first[0], float(first[1])
        assert slowest < 0.5, f"an upload_file call took {slowest}s with the api down"
        wait_until(lambda: httpx.get(f"{settings.api}/api/v1/runs/{run_id}", timeout=10).status_code == 200, 60, what="the run stored")
        assert _files(settings, run_id) == {}  # nothing could be uploaded yet
        spooled = list((Path(settings.home) / "artifact-spool").glob("*/*.bin"))
        assert len([p for p in spooled if p.stat().st_size >= 1000]) >= 20
        forwarder.start()  # the api is back
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "flushed True"
        assert proc.wait(60) == 0
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr and "file uploads to" in stderr  # one warning, no exception
    finally:
        if proc.poll() is None:
            proc.kill()
    files = wait_until(lambda: len(f := _files(settings, run_id)) == 20 and f, 30, what="20 files listed")
    for i in range(20):
        meta = files[f"outputs/model_{i}.bin"]
        assert meta["size"] == 1000 + i and meta["sha256"] == hashlib.sha256(bytes([i]) * (1000 + i)).hexdigest()
    body = httpx.get(f"{settings.api}/api/v1/runs/{run_id}/files/outputs/model_7.bin", timeout=10).content
    assert body == bytes([7]) * 1007


def test_a_large_file_streams_and_folders_and_figures_land_as_files_and_images(tmp_path: Path, settings: Settings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    big = tmp_path / "weights.bin"
    with open(big, "wb") as f:  # 48 MB, not repetitive, so no layer can shortcut it
        for i in range(48):
            f.write(hashlib.sha256(str(i).encode()).digest() * 32768)
    folder = tmp_path / "checkpoints"
    (folder / "epoch-1").mkdir(parents=True)
    (folder / "epoch-1" / "model.pt").write_bytes(b"one")
    (folder / "summary.json").write_text("{}")
    run = Experiment("artifacts", settings=settings).start_logging(name="large")
    run.upload_file("outputs/weights.bin", big)
    assert run.upload_folder("checkpoints", folder) == ["checkpoints/epoch-1/model.pt", "checkpoints/summary.json"]
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0.5, 0.3, 0.2])
    run.log_image("ROC", plot=fig)
    with open(big, "rb") as stream:
        run.upload_file("outputs/copy.bin", stream)  # a binary stream too
    assert run.flush(timeout=120)
    run.complete()
    files = wait_until(lambda: len(f := _files(settings, run.id)) == 5 and f, 30, what="5 files listed")
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    assert files["outputs/weights.bin"]["sha256"] == digest == files["outputs/copy.bin"]["sha256"]
    assert files["outputs/weights.bin"]["size"] == big.stat().st_size
    assert files["images/ROC.png"]["kind"] == "image" and files["images/ROC.png"]["name"] == "ROC"
    run.download_file("outputs/weights.bin", tmp_path / "back.bin")
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).hexdigest() == digest
    with pytest.raises(ValueError, match="not a file"):
        run.upload_file("outputs/missing.bin", tmp_path / "missing.bin")


def test_files_left_by_an_exited_process_are_uploaded_by_the_next(tmp_path: Path, settings: Settings, down_api: tuple[Forwarder, str]) -> None:
    forwarder, url = down_api
    home = tmp_path / "home"  # its own home: the spool this test leaves is adopted only here
    script = textwrap.dedent(
        """
        from runstream import Experiment
        run = Experiment("artifacts").start_logging(name="left-behind")
        import io
        run.upload_file("outputs/notes.txt", io.BytesIO(b"written before exit"))
        run.log("x", 1.0)
        print(run.id, flush=True)
        """
    )
    env = child_env(settings.with_(api=url, home=home), {"PYTHONPATH": str(ROOT), "RUNSTREAM_CAPTURE_OUTPUT": "0"})
    env["RUNSTREAM_EXIT_FLUSH_TIMEOUT"] = "1"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert list((home / "artifact-spool").glob("*/*.bin")), "the exiting process should have left its file spooled"
    wait_until(lambda: httpx.get(f"{settings.api}/api/v1/runs/{run_id}", timeout=10).status_code == 200, 60, what="the run stored")
    assert _files(settings, run_id) == {}

    forwarder.start()
    # The next process on this home (here: a new run in this one) adopts and uploads it.
    later = Experiment("artifacts", settings=settings.with_(api=url, home=home)).start_logging(name=f"next-{uuid.uuid4().hex[:4]}")
    (tmp_path / "o.txt").write_text("o")
    later.upload_file("outputs/other.txt", tmp_path / "o.txt")
    assert later.flush(timeout=60)
    later.complete()
    files = wait_until(lambda: _files(settings, run_id), 30, what="the adopted file listed")
    assert list(files) == ["outputs/notes.txt"] and files["outputs/notes.txt"]["size"] == len(b"written before exit")
    assert not list((home / "artifact-spool").glob("*/*.bin"))
