"""The production topology: two `runstream processor` and two `runstream api` processes,
separate and started together, on one Kafka broker and one ClickHouse server.

100 concurrent runs log while one processor is killed with SIGKILL and restarted:
every point is stored exactly once; both apis push the live updates of every run to
their subscribers; both dashboards list every run. The four start at the same moment
on a fresh database, so their migrations meet (tests/test_migration_lock.py has the
details of that).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import httpx
import pytest
from websockets.sync.client import connect

from runstream import Experiment
from runstream.config import Settings
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, free_port, new_settings, wait_until
from tests.test_scaleout import METRICS, TrainingLoop, value

ROOT = Path(__file__).resolve().parent.parent
RUNS = 100
STEPS_PER_SECOND = 20  # of every run: 100 runs x 2 metrics x 20 = 4,000 points/s


# How each service is started: tests/test_compose.py checks docker-compose.yml runs the same.
SHARED_ENV = ("RUNSTREAM_KAFKA", "RUNSTREAM_CLICKHOUSE", "RUNSTREAM_TOPIC_PREFIX", "RUNSTREAM_PARTITIONS", "RUNSTREAM_GROUP")


def processor_args(metrics_port: int) -> list[str]:
    return ["processor", "--metrics-port", str(metrics_port)]


def api_args(port: int) -> list[str]:
    return ["api", "--port", str(port)]


class Service:
    """One `runstream processor` or `runstream api` process with its log."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runstream.cli", *self.args], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def processor_written(port: int) -> int | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("runstream_processor_points_written_total "):
            return int(float(line.split()[1]))
    return None


def api_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class LiveWatcher(threading.Thread):
    """A /ws subscriber of one api for one experiment: the runs it saw points and a Completed status for."""

    def __init__(self, api: str, experiment: str) -> None:
        super().__init__(name=f"ws-{api}", daemon=True)
        self.url = api.replace("http://", "ws://") + "/ws"
        self.experiment = experiment
        self.with_points: set[str] = set()
        self.completed: set[str] = set()
        self.subscribed = threading.Event()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.url, open_timeout=10) as ws:
                ws.send(json.dumps({"subscribe": {"experiment": self.experiment}}))
                while not self.halt.is_set():
                    try:
                        msg = json.loads(ws.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    if msg.get("type") in ("subscribed", "snapshot"):
                        self.subscribed.set()
                    for item in msg["updates"] if msg.get("type") == "updates" else [msg]:
                        if item.get("type") != "update":
                            continue
                        if item.get("metrics"):
                            self.with_points.add(item["run"])
                        if item.get("status") == "Completed":
                            self.completed.add(item["run"])
        except BaseException as exc:  # surfaced by the test
            self.error = exc


@pytest.fixture()
def database(clickhouse_server: str) -> Iterator[str]:
    base = clickhouse_server.rsplit("/", 1)[0]
    name = f"topo_{uuid.uuid4().hex[:10]}"
    admin = clickhouse_connect.get_client(dsn=f"{base}/default", autogenerate_session_id=False)
    admin.command(f"CREATE DATABASE {name}")
    try:
        yield f"{base}/{name}"
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {name}")


def test_two_processors_and_two_apis_store_every_point_once_across_a_sigkill_and_serve_it_live_on_both(
    home: Path, kafka_bootstrap: str, database: str, tmp_path: Path, test_output: Path
) -> None:
    settings: Settings = new_settings(home, kafka_bootstrap).with_(partitions=8)
    group = f"g-topo-{uuid.uuid4().hex[:6]}"
    shared = dict(zip(SHARED_ENV, (kafka_bootstrap, database, settings.topic_prefix, str(settings.partitions), group), strict=True))
    env = {**os.environ, **shared}
    metrics_ports = [free_port(), free_port()]
    api_ports = [free_port(), free_port()]
    services: list[Service] = []

    def service(name: str, args: list[str]) -> Service:
        s = Service(name, args, {**env, "RUNSTREAM_HOME": str(tmp_path / f"home-{name}")}, tmp_path)
        services.append(s)
        return s

    try:
        # All four at once, as compose starts them.
        processors = [service(f"processor{i}", processor_args(port)) for i, port in enumerate(metrics_ports)]
        apis = [service(f"api{i}", api_args(port)) for i, port in enumerate(api_ports)]
        api_urls = [f"http://127.0.0.1:{port}" for port in api_ports]

        def all_up() -> bool:
            dead = [s.name for s in services if not s.alive()]
            assert not dead, f"{dead} exited at start-up: " + " | ".join(s.tail() for s in services if not s.alive())
            return all(processor_written(p) is not None for p in metrics_ports) and all(api_healthy(u) for u in api_urls)

        wait_until(all_up, 120, interval=0.2, what="two processors and two apis up")

        experiment = f"topology-{uuid.uuid4().hex[:6]}"
        watchers = [LiveWatcher(url, experiment) for url in api_urls]
        for w in watchers:
            w.start()
            assert w.subscribed.wait(20), w.error
        client = settings.with_(api=api_urls[0])
        exp = Experiment(experiment, settings=client)
        runs = [exp.start_logging(name=f"run-{i:03d}", params={"i": i}) for i in range(RUNS)]
        loop = TrainingLoop(runs, STEPS_PER_SECOND)
        loop.start()
        # Both processors store points (the 8 partitions are split between them), then one is killed.
        wait_until(lambda: all((processor_written(p) or 0) > 0 for p in metrics_ports), 60, what="both processors writing")
        processors[0].kill()
        assert processors[1].alive()
        steps_at_kill = loop.steps
        wait_until(lambda: loop.steps >= steps_at_kill + 20, 60, what="training goes on while a processor is down")
        processors[0].start()
        wait_until(lambda: (processor_written(metrics_ports[0]) or 0) > 0, 90, what="the restarted processor writing again")
        steps = loop.finish()
        for run in runs:
            run.complete()

        expected = RUNS * steps * len(METRICS)
        storage = clickhouse_connect.get_client(dsn=database, autogenerate_session_id=False)
        ids = [r.id for r in runs]

        def stored() -> tuple[int, int, float]:
            row = storage.query(
                "SELECT count(), uniqExact(run_id, metric, step), sum(value) FROM metric_points WHERE run_id IN {ids:Array(String)}",
                parameters={"ids": ids},
            ).result_rows[0]
            return int(row[0]), int(row[1]), float(row[2])

        wait_until(lambda: stored()[1] == expected, 120, what=f"{expected} distinct points stored")
        count, distinct, total = stored()
        print(f"topology: {RUNS} runs x {steps} steps x {len(METRICS)} metrics = {expected} points; stored {count}, distinct {distinct}")
        assert (count, distinct) == (expected, expected), f"{count - expected} duplicates"
        expected_sum = RUNS * sum(value(s, j) for s in range(steps) for j in range(len(METRICS)))
        assert abs(total - expected_sum) < 1e-6 * expected_sum

        # Either api answers every run, Completed, and pushed every run's points and its end live.
        for url in api_urls:
            listed = wait_until(
                lambda u=url: (
                    (r := httpx.get(f"{u}/api/v1/runs", params={"experiment": experiment, "limit": 1000}, timeout=10).json()["runs"])
                    and len(r) == RUNS
                    and all(x["status"] == "Completed" for x in r)
                    and r
                ),
                60,
                what=f"{url} lists {RUNS} Completed runs",
            )
            assert {x["id"] for x in listed} == set(ids)
        for w in watchers:
            wait_until(lambda w=w: w.completed >= set(ids) and w.with_points >= set(ids), 60, what=f"live updates of every run on {w.url}")
            assert w.error is None, w.error

        # Either api's dashboard lists every run of the experiment.
        if not Path(CHROMIUM).exists():
            pytest.skip("Chromium is not installed (make chromium)")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for i, url in enumerate(api_urls):
                    page = browser.new_page(viewport={"width": 1440, "height": 1000})
                    page.goto(f"{url}/#/?experiment={experiment}&limit=100")
                    page.wait_for_function(f"() => document.querySelectorAll('table.runs tbody tr[data-run] .badge.st-completed').length === {RUNS}")
                    shown = set(page.eval_on_selector_all("table.runs tbody tr[data-run]", "rows => rows.map(r => r.dataset.run)"))
                    assert shown == set(ids)
                    page.screenshot(path=str(test_output / f"topology-api{i}-runs.png"))
                    page.close()
            finally:
                browser.close()
        assert all(s.alive() for s in services), [s.name for s in services if not s.alive()]
    finally:
        for w in locals().get("watchers", []):
            w.halt.set()
        for s in services:
            s.stop()
