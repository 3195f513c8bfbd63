"""The release path (issue 12): a wheel built from a clean clone, installed into a fresh
virtualenv outside the repository, first client-only and then with the server extra.

This module owns the checks that `pip install runstream` is the client alone (it logs a
run to Kafka; no server library, nothing but `runstream` in site-packages), that the
server commands refuse a client install with one line, and that `runstream[server]`
from the same wheel serves the dashboard with its chart library.

Nothing here reaches a registry: pip installs with `--no-index` from the wheelhouse that
`make wheelhouse` fills (run by `make test`), and the wheel's build runs npm offline from
the cache `make dashboard-assets` filled. The only sockets are the session's Kafka broker
and the server, on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from runstream.wire import decode
from tests.conftest import free_port

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = Path(os.environ.get("RUNSTREAM_WHEELHOUSE", REPO / ".runstream" / "wheelhouse"))
# Distributions of the server extra (and what they pull in) that a client install must not have.
SERVER_DISTS = {
    "chdb-core",
    "chdb",
    "clickhouse-connect",
    "fastapi",
    "starlette",
    "uvicorn",
    "pyarrow",
    "pydantic",
    "websockets",
    "prometheus-client",
}
# Building the wheel, installing the server extra (the engine's wheel is large) and the
# server's first start, each bounded by its own subprocess timeout as well.
pytestmark = pytest.mark.timeout(900)

STEPS = 50

# Runs inside the fresh venv: the documented client usage, then what it imported.
CLIENT_SCRIPT = f"""
import json, sys
import runstream
from runstream import Experiment

run = Experiment("packaging").start_logging(name="wheel-client", params={{"lr": 0.1}})
for step in range({STEPS}):
    run.log_metrics({{"loss": 1.0 / (step + 1), "acc": step / {STEPS}}}, step=step)
run.log("final", 0.5)
assert run.flush(60), "flush did not finish within 60 s"
run.complete()
print(json.dumps({{"run": run.id, "file": runstream.__file__, "modules": sorted({{m.split(".")[0] for m in sys.modules}})}}))
"""

# Runs inside the fresh venv: its distributions and its site-packages entries.
INVENTORY_SCRIPT = """
import importlib.metadata, json, os, sysconfig
site = sysconfig.get_paths()["purelib"]
dists = sorted({d.metadata["Name"].lower().replace("_", "-") for d in importlib.metadata.distributions()})
print(json.dumps({"site": site, "dists": dists, "entries": sorted(os.listdir(site))}))
"""


def _run(cmd: list[str], *, timeout: float, env: dict[str, str], cwd: Path, check: bool = True, hint: str = "") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}{hint}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


# A wheel missing from the wheelhouse (a dependency added since it was filled) or an npm
# cache without the dashboard's packages fails offline; the fix is the set-up target.
PIP_HINT = " (offline: is the wheelhouse current? run `make wheelhouse`)"
BUILD_HINT = " (offline: run `make wheelhouse` for setuptools and `make dashboard-assets` for npm's cache)"


def _offline_env(home: Path) -> dict[str, str]:
    """The environment of every subprocess: pip from the wheelhouse only, npm from its cache
    only, and no trace of the test's own venv or of a shared runstream state folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "PIP_", "npm_config_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(WHEELHOUSE),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        npm_config_offline="true",
        npm_config_audit="false",
        npm_config_fund="false",
        npm_config_update_notifier="false",
        RUNSTREAM_HOME=str(home),
        RUNSTREAM_CAPTURE_OUTPUT="0",
    )
    return env


@dataclass
class Inventory:
    site: Path  # the venv's site-packages
    dists: set[str]  # normalised distribution names
    entries: set[str]  # what site-packages holds


@dataclass
class Release:
    wheel: Path
    venv: Path
    work: Path  # cwd and RUNSTREAM_HOME parent of everything run in the venv, outside the repository
    env: dict[str, str]
    baseline: set[str]  # distributions of the fresh venv before runstream
    server_installed: bool = False

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def inventory(self) -> Inventory:
        found = json.loads(_run([str(self.python), "-c", INVENTORY_SCRIPT], timeout=60, env=self.env, cwd=self.work).stdout)
        return Inventory(site=Path(found["site"]), dists=set(found["dists"]), entries=set(found["entries"]))


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    if not any(WHEELHOUSE.glob("setuptools-*.whl")):
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: run `make wheelhouse` (network allowed) before this test; `make test` runs it", pytrace=False)
    work = tmp_path_factory.mktemp("packaging")
    assert not work.resolve().is_relative_to(REPO), f"the temp folder {work} must be outside the repository"
    env = _offline_env(work / "home")
    started = time.monotonic()

    # The committed HEAD, as a release would see it: no dashboard/vendor, no node_modules.
    src = work / "src"
    _run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(src)], timeout=120, env=env, cwd=work)
    assert not (src / "dashboard" / "vendor").exists() and not (src / "dashboard" / "node_modules").exists()

    # `pip wheel --no-deps` with build isolation: setuptools comes from the wheelhouse, and
    # setup.py's build_py runs `npm ci` (offline) for the chart library.
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(src)], timeout=300, env=env, cwd=work, hint=BUILD_HINT)
    (wheel,) = dist.glob("runstream-*.whl")

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=120, env=env, cwd=work)
    rel = Release(wheel=wheel, venv=venv, work=work, env=env, baseline=set())
    rel.baseline = rel.inventory().dists
    _run([str(rel.python), "-m", "pip", "install", "--quiet", str(wheel)], timeout=300, env=env, cwd=work, hint=PIP_HINT)
    print(f"\npackaging: clone + wheel + client install {time.monotonic() - started:.1f} s")
    yield rel
    # The server install is most of a GiB and pytest keeps its last temp folders: drop the
    # venv and the clone, keep the logs.
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)


def test_the_wheel_holds_runstream_only_with_the_dashboard_assets(release: Release) -> None:
    with zipfile.ZipFile(release.wheel) as whl:
        names = whl.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        record = whl.read(f"{dist_info}/RECORD").decode()
        top_level = whl.read(f"{dist_info}/top_level.txt").decode().split() if f"{dist_info}/top_level.txt" in names else ["runstream"]
        esm = whl.read("runstream/dashboard/vendor/uPlot.esm.js")
    recorded = {line.split(",")[0].split("/")[0] for line in record.splitlines() if line}
    assert recorded == {"runstream", dist_info}, f"the wheel installs more than runstream: {sorted(recorded)}"
    assert top_level == ["runstream"]
    for path in ("runstream/dashboard/index.html", "runstream/dashboard/vendor/uPlot.min.css", "runstream/ingest/run.py", "runstream/api/app.py"):
        assert path in names, f"{path} missing from the wheel"
    assert b"uPlot" in esm and len(esm) > 10_000


def test_client_install_has_no_server_and_only_runstream_in_site_packages(release: Release) -> None:
    assert not release.server_installed, "this test checks the client-only install; it runs before the server test (file order)"
    inv = release.inventory()
    dists = inv.dists
    added = dists - release.baseline
    print(f"\nclient install added: {sorted(added)}")
    assert "runstream" in added
    assert not dists & SERVER_DISTS, f"the client install pulled in server libraries: {sorted(dists & SERVER_DISTS)}"
    entries = inv.entries
    assert not entries & {"api", "processor", "ingest", "dashboard", "storage"}, f"stray top-level packages: {sorted(entries)}"
    # What pip recorded for our distribution: runstream/, its dist-info and the console script.
    (info,) = inv.site.glob("runstream-*.dist-info")
    installed = {line.split(",")[0] for line in (info / "RECORD").read_text().splitlines() if line}
    outside = {p for p in installed if not p.startswith(("runstream/", f"{info.name}/"))}
    assert all(p.startswith("../") and p.endswith("/bin/runstream") for p in outside), f"our wheel installed more than runstream: {sorted(outside)}"


@pytest.mark.parametrize("command", ["up", "processor", "api"])
def test_server_commands_refuse_a_client_install_in_one_line(release: Release, command: str) -> None:
    assert not release.server_installed, "this test checks the client-only install; it runs before the server test (file order)"
    proc = _run([str(release.venv / "bin" / "runstream"), command], timeout=60, env=release.env, cwd=release.work, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"runstream {command} needs the server install: pip install 'runstream[server]'"), lines[0]


async def _events_of(bootstrap: str, topic: str, run_id: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The run's events on the topic, read from the start until its run_end (or the deadline)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    events: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(e["kind"] == "run_end" for e in events):
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                events += [ev for ev in (decode(r.value) for r in records) if ev["run"] == run_id]
    finally:
        await consumer.stop()
    return events


@dataclass
class LoggedRun:
    run_id: str
    prefix: str


@pytest.fixture(scope="module")
def logged_run(release: Release, kafka_bootstrap: str) -> LoggedRun:
    prefix = f"pkg{uuid.uuid4().hex[:10]}"
    env = {**release.env, "RUNSTREAM_KAFKA": kafka_bootstrap, "RUNSTREAM_TOPIC_PREFIX": prefix, "RUNSTREAM_API": "http://127.0.0.1:1"}
    out = _run([str(release.python), "-c", CLIENT_SCRIPT], timeout=120, env=env, cwd=release.work)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(release.venv.resolve()), f"imported runstream from {result['file']}, not the venv"
    imported_server = set(result["modules"]) & {"fastapi", "starlette", "uvicorn", "pyarrow", "pydantic", "clickhouse_connect", "chdb"}
    assert not imported_server, imported_server
    return LoggedRun(run_id=result["run"], prefix=prefix)


async def test_client_install_logs_a_run_to_kafka(release: Release, logged_run: LoggedRun, kafka_bootstrap: str) -> None:
    # What arrived on the topic; the values themselves are checked through the api once the
    # server install's processor has stored them (the next test).
    events = await _events_of(kafka_bootstrap, f"{logged_run.prefix}.events", logged_run.run_id)
    kinds = [e["kind"] for e in events]
    assert kinds[:1] == ["run_start"] and kinds.count("run_end") == 1 and "metrics" in kinds, kinds
    assert events[0]["experiment"] == "packaging" and events[0]["name"] == "wheel-client"
    names = {name for e in events if e["kind"] == "metrics" for name in e["names"]}
    assert names == {"loss", "acc", "final"}, names


def test_server_extra_from_the_wheel_serves_the_dashboard(release: Release, logged_run: LoggedRun, kafka_bootstrap: str) -> None:
    started = time.monotonic()
    _run(
        [str(release.python), "-m", "pip", "install", "--quiet", f"{release.wheel}[server]"],
        timeout=600,
        env=release.env,
        cwd=release.work,
        hint=PIP_HINT,
    )
    release.server_installed = True
    installed = time.monotonic() - started
    dists = release.inventory().dists
    assert {"chdb-core", "clickhouse-connect", "fastapi", "uvicorn", "pyarrow"} <= dists

    port = free_port()
    env = {**release.env, "RUNSTREAM_KAFKA": kafka_bootstrap, "RUNSTREAM_TOPIC_PREFIX": logged_run.prefix}
    log_path = release.work / "up.log"
    with open(log_path, "w") as log, httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as http:
        server = subprocess.Popen(
            [str(release.venv / "bin" / "runstream"), "up", "--host", "127.0.0.1", "--port", str(port)],
            cwd=release.work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            health = _await_health(http, server, log_path, timeout=180)
            assert health["clickhouse"] == "ok", health
            page = http.get("/")
            assert page.status_code == 200 and "<title>runstream</title>" in page.text and "./vendor/uPlot.min.css" in page.text
            esm = http.get("/vendor/uPlot.esm.js")
            assert esm.status_code == 200, esm.status_code
            with zipfile.ZipFile(release.wheel) as whl:
                assert esm.content == whl.read("runstream/dashboard/vendor/uPlot.esm.js")
            assert "javascript" in esm.headers["content-type"], esm.headers
            assert http.get("/vendor/uPlot.min.css").status_code == 200
            # The processor of the installed server ingests the run the client logged.
            run = _await_run_completed(http, logged_run.run_id, timeout=90)
            assert run["status"] == "Completed", run
            loss = http.get(f"/api/v1/runs/{logged_run.run_id}/metrics/loss").json()
            assert loss["steps"] == list(range(STEPS)) and loss["values"] == [1.0 / (s + 1) for s in range(STEPS)], loss
            acc = http.get(f"/api/v1/runs/{logged_run.run_id}/metrics/acc").json()
            assert acc["values"] == [s / STEPS for s in range(STEPS)], acc
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
    text = log_path.read_text()
    assert "no dashboard files" not in text and "has no vendor/uPlot.esm.js" not in text, text
    print(f"\npackaging: server install {installed:.1f} s, up + checks + stop {time.monotonic() - started - installed:.1f} s")


def _await_health(http: httpx.Client, server: subprocess.Popen[bytes], log_path: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"runstream up exited {server.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            reply = http.get("/healthz", timeout=2)
            if reply.status_code == 200:
                return dict(reply.json())
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # the port is not listening yet: nothing to wait on but the next connect
    raise AssertionError(f"runstream up did not answer /healthz within {timeout} s:\n{log_path.read_text()[-4000:]}")


def _await_run_completed(http: httpx.Client, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = http.get(f"/api/v1/runs/{run_id}")
        if last.status_code == 200 and last.json().get("status") == "Completed":
            return dict(last.json())
        time.sleep(0.2)  # the processor's batch is not in ClickHouse yet; the api has no wait-for-run call
    raise AssertionError(f"run {run_id} not Completed through the api within {timeout} s: {last and (last.status_code, last.text[:500])}")
