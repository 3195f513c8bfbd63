"""runstream next to the tools users would pick instead, on one workload, in one run, on this machine.

    .venv/bin/python bench/peers.py [--runs 100] [--steps 1000] [--metrics 10] [--only runstream,mlflow]
                                    [--skip wandb] [--kafka HOST:PORT] [--budget 40] [--json out.json]

Workload: RUNS runs x STEPS steps x METRICS metrics (default 100 x 1,000 x 10 = 1,000,000 points), every
step logged with the tool's "several metrics at one step" call, plus a single-metric loop of log() calls.

  runstream  Experiment.start_logging() x RUNS, run.log_metrics({...}, step=s) -> Kafka (a LocalBroker on a
             free loopback port unless --kafka) -> Processor (same process, background loop) -> embedded
             ClickHouse; queryable = `SELECT count() FROM metric_points` holds every point.
  mlflow     `mlflow server` (default SQLite store, 127.0.0.1, default workers) through MlflowClient:
             log_metric per point, log_batch of one step (= log_metrics), log_batch of 1,000 points
             (client-side buffering) and async log_batch (synchronous=False); queryable = get_metric_history
             returns every point.
  mlflow-runstream  the same MLflow client workload, call for call, against runstream's MLflow-compatible
             API (api/mlflow, docs/mlflow.md): `runstream up` (processor + api, embedded ClickHouse) in its own
             process on a LocalBroker; queryable = get_metric_history returns every point (it waits for the
             processor: read-after-write). Also times get_run right after a write (the read-after-write wait)
             against get_run with nothing pending.
  aim        aim.Run(repo=<temp folder>), run.track({...}, step=s), run.close(); queryable = the runs
             indexed (what `aim up` does in the background) and every point read back through aim.Repo.
  wandb      WANDB_MODE=offline, wandb.init(), run.log({...}, step=s), run.finish(); queryable = finish()
             has written the run's files.

points/s = points / (first logging call .. all points queryable). Tools that cannot do the whole workload
within --budget seconds per mode do whole runs until the budget is spent (a subset, said in the output).
The cost of one call in the training thread is timed separately in tight loops (time.perf_counter_ns).
Each tool runs in its own child process of this script; a tool that does not import in the project venv
is tried in bench/.venv-peers, else skipped with the error.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("runstream", "mlflow", "mlflow-runstream", "aim", "wandb")
PEERS_VENV = ROOT / "bench" / ".venv-peers"
# No telemetry, no cloud: every peer stays on this machine.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_DISABLE_GIT": "true",
    "AIM_UI_TELEMETRY_ENABLED": "0",
    "GIT_PYTHON_REFRESH": "quiet",
    # MLflow 3's server also starts ~7 huey job-runner processes (prompt optimisation and other jobs, nothing to do
    # with tracking); on 2 cores their start-up would land in MLflow's first measurements, so they are off.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
Row = dict[str, Any]


# --- helpers shared by parent and workers (stdlib only) ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pkg_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> str:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.common import machine as describe  # stdlib-only module, importable from any venv

    return describe()


def timed_chunks(body: Callable[[int, int], None], max_calls: int, budget_s: float, chunk: int = 500) -> tuple[int, float]:
    """Run body(lo, hi) (a tight loop of calls lo..hi) until max_calls or budget_s; (calls, ns per call)."""
    gc.collect()
    n = 0
    t0 = time.perf_counter_ns()
    deadline = t0 + int(budget_s * 1e9)
    while n < max_calls:
        hi = min(max_calls, n + chunk)
        body(n, hi)
        n = hi
        if time.perf_counter_ns() > deadline:
            break
    return n, (time.perf_counter_ns() - t0) / n


def new_row(tool: str, mode: str, args: argparse.Namespace) -> Row:
    return {
        "tool": tool,
        "mode": mode,
        "points": 0,
        "runs_done": 0,
        "runs": args.runs,
        "steps": args.steps,
        "metrics": args.metrics,
        "subset": "",
        "loop_s": None,
        "total_s": None,
        "pps": None,
        "us_log": None,
        "log_calls": 0,
        "us_log10": None,
        "log10_calls": 0,
        "verified": "",
        "note": "",
    }


def finish_row(row: Row, points: int, runs_done: int, t0: float, t_loop: float, t_done: float, full: int) -> None:
    row["points"] = points
    row["runs_done"] = runs_done
    row["loop_s"] = t_loop - t0
    row["total_s"] = t_done - t0
    row["pps"] = points / (t_done - t0) if t_done > t0 else None
    if points < full:
        row["subset"] = f"subset: {points:,} of {full:,} points ({runs_done} whole runs) within the budget"


def step_values(step: int, names: list[str]) -> dict[str, float]:
    base = step * 0.001
    return {name: base + j for j, name in enumerate(names)}


# --- runstream ---


class InProcessProcessor:
    """The processor on a loop in this process (shares the training thread's GIL)."""

    def __init__(self, settings: Any, store: Any, loop: Any) -> None:
        import asyncio

        from runstream.processor.consumer import Processor

        self.store, self.loop, self.topic = store, loop, settings.events_topic
        self.proc = Processor(settings, store)
        asyncio.run_coroutine_threadsafe(self.proc.start(), loop).result(120)

    def points_written(self) -> int:
        import asyncio

        sql = "SELECT count() FROM metric_points WHERE kafka_topic = {t:String}"
        return int(asyncio.run_coroutine_threadsafe(self.store.aquery_rows(sql, {"t": self.topic}), self.loop).result(60)[0][0])

    def consumer_lag(self) -> int:
        return int(self.proc.stats.consumer_lag)

    def dead_letters(self) -> int:
        return int(self.proc.stats.dead_letters)

    def describe(self) -> str:
        st = self.proc.stats
        return str({k: getattr(st, k) for k in ("events_in", "events_written", "events_skipped", "points_written", "dead_letters", "last_error")})

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.proc.stop(), self.loop).result(60)


def bench_runstream(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, str]]:
    sys.path.insert(0, str(ROOT))
    import asyncio

    from runstream import Experiment
    from runstream.config import Settings
    from runstream.kafka_broker import LocalBroker
    from runstream.storage.store import get_store

    versions = {"runstream": pkg_version("runstream"), "chdb-core": pkg_version("chdb-core"), "aiokafka": pkg_version("aiokafka")}
    try:  # the code measured: commit, and whether the client or processor had uncommitted edits
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        status = ["git", "status", "--porcelain", "ingest", "processor", "runstream"]
        dirty = [ln[3:] for ln in subprocess.run(status, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.splitlines()]
        versions["runstream"] += f" @ {head}" + (f" + uncommitted edits in {' '.join(dirty)}" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    home = work / "runstream"
    home.mkdir(parents=True, exist_ok=True)
    broker = None
    kafka = args.kafka
    if not kafka:
        kafka = f"127.0.0.1:{free_port()}"
        broker = LocalBroker(home, kafka)
        t = time.perf_counter()
        broker.start()
        print(f"  runstream: Kafka broker at {kafka} started in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="peers-processor-loop", daemon=True).start()
    processor: Any = None
    rows: list[Row] = []
    workload_ids: list[str] = []
    full = args.runs * args.steps * args.metrics
    try:
        prefix = f"peers{uuid.uuid4().hex[:8]}"
        settings = Settings().with_(home=home, kafka=kafka, api="http://127.0.0.1:1", topic_prefix=prefix, partitions=4, project="peers")
        settings = settings.with_(api_key=None, run_id=None)
        if args.processor == "process":
            from bench.common import ProcessorProcess

            processor = ProcessorProcess(settings, home / "clickhouse")
        else:
            processor = InProcessProcessor(settings, get_store(f"chdb://{home / 'clickhouse'}"), loop)

        def count() -> int:
            return processor.points_written()

        def wait_count(expected: int, timeout: float) -> float:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if count() >= expected:
                    return time.perf_counter()
                time.sleep(0.05)
            raise TimeoutError(f"only {count():,} of {expected:,} points in ClickHouse after {timeout:.0f}s")

        def diagnostics() -> str:
            shipper = exp_runs_shipper[0]
            client = {k: getattr(shipper, k, None) for k in ("sent_events", "acked_events", "failed_sends", "dropped_points", "buffered_points")}
            return f"client {client}; processor {processor.describe()}"

        exp_runs_shipper: list[Any] = []

        exp = Experiment("peers", settings=settings)
        warm = exp.start_logging(name="warm-up")  # producer connected, topics and consumer assignment in place
        warm.log("warm", 1.0)
        warm.complete()
        wait_count(1, 120)
        if args.warmup:
            # One untimed pass of the workload's shape: a freshly started broker's JVM is still
            # compiling its hot paths (its CPU per million points halves once warm), and a
            # deployed broker and processor are long-running. Runs of their own experiment.
            t = time.perf_counter()
            warm_exp = Experiment("peers-warm-up", settings=settings)
            warm_runs = [warm_exp.start_logging(name=f"warm-{i}") for i in range(args.runs)]
            warm_names = [f"metric_{j}" for j in range(args.metrics)]
            for step in range(args.steps):
                values = step_values(step, warm_names)
                for run in warm_runs:
                    run.log_metrics(values, step=step)
            for run in warm_runs:
                run.complete()
            expected = 1 + args.runs * args.steps * args.metrics
            wait_count(expected, args.settle)
            time.sleep(2.0)  # the warm-up's last writes and their merges settle before the clock starts
            print(f"  runstream: warm-up pass ({expected - 1:,} points, untimed) in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        baseline = count()

        # 1) the workload: RUNS open runs, step-major, one log_metrics call per run and step
        row = new_row("runstream", "log_metrics (non-blocking) -> Kafka -> ClickHouse", args)
        names = [f"metric_{j}" for j in range(args.metrics)]
        gc.collect()
        t0 = time.perf_counter()
        runs = [exp.start_logging(name=f"peers-{i}") for i in range(args.runs)]
        exp_runs_shipper.append(runs[0]._shipper)
        workload_ids.extend(r.id for r in runs)
        for step in range(args.steps):
            values = step_values(step, names)
            for run in runs:
                run.log_metrics(values, step=step)
        t_loop = time.perf_counter()
        runs[0].flush(timeout=600)  # one shipper per process: flushes every run
        t_acked = time.perf_counter()
        # Until every point is counted; if the count stops short (see "lost" in the notes), until it stopped
        # growing with nothing left in flight (consumer lag 0) for 10s, timed at its last increase.
        last, t_done, quiet_since = -1, time.perf_counter(), time.monotonic()
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:
            n = count()
            if n != last:
                last, t_done, quiet_since = n, time.perf_counter(), time.monotonic()
            if n >= baseline + full:
                break
            if time.monotonic() - quiet_since > 10 and processor.consumer_lag() == 0:
                break
            time.sleep(0.02)
        stored = last - baseline
        if stored < full * 0.99:
            raise TimeoutError(f"only {stored:,} of {full:,} points in ClickHouse after {args.settle:.0f}s; {diagnostics()}")
        finish_row(row, stored, args.runs, t0, t_loop, t_done, full)
        row["subset"] = ""
        row["verified"] = f"count() = {stored:,}"
        if stored < full:
            row["verified"] += f" - LOST {full - stored:,} points ({diagnostics()})"
        row["note"] = f"all {args.runs} runs open at once in one thread; Kafka acked {t_acked - t0:.1f}s after the first call"
        row["note"] += "; after one untimed warm-up pass of the same shape" if args.warmup else "; first pass on a cold broker (--warmup 0)"
        t = time.perf_counter()
        for run in runs:
            run.complete()
        row["note"] += f"; run.complete() afterwards: {(time.perf_counter() - t) / len(runs) * 1e3:.1f} ms per run (it flushes)"
        print(f"  runstream: {full:,} points in {t_done - t0:.1f}s", file=sys.stderr)

        # 2) cost of one call in the training thread (shipper and processor running, as in real use)
        run = exp.start_logging(name="call-cost")
        log = run.log
        log_metrics = run.log_metrics
        ten = {f"m{j}": 0.1 * j for j in range(10)}

        def single(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                log("loss", i * 0.001)

        def multi(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                log_metrics(ten, step=i)

        row["log_calls"], ns = timed_chunks(single, args.calls, 60.0, chunk=10_000)
        row["us_log"] = ns / 1e3
        row["log10_calls"], ns = timed_chunks(multi, args.calls // 10, 60.0, chunk=1_000)
        row["us_log10"] = ns / 1e3
        run.complete()
        rows.append(row)
        if processor.dead_letters():
            row["note"] += f"; {processor.dead_letters()} dead letters"
    finally:
        if processor is not None:
            try:
                processor.stop()
            except Exception:
                pass
        loop.call_soon_threadsafe(loop.stop)
        if broker is not None:
            broker.stop()
    if rows and args.processor == "process":
        # The figure used the processor's counter (it counts a point once its insert has
        # returned); the workload's rows are counted again here, in the engine itself.
        from bench.common import ProcessorProcess

        stored, distinct = ProcessorProcess.count_rows(home / "clickhouse", workload_ids)
        rows[0]["verified"] = f"count() = {stored:,}, distinct (run, metric, step) = {distinct:,}, read back after the processor stopped"
        if stored != full or distinct != full:
            rows[0]["verified"] += f" - EXPECTED {full:,}"
    return rows, versions


# --- MLflow ---


def start_mlflow_server(work: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    import urllib.request

    folder = work / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)]
    log_path = folder / "server.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url, log_path
        except OSError:
            pass
        time.sleep(0.3)
    stop_group(proc)
    raise RuntimeError(f"mlflow server did not answer within 180s: {log_path.read_text(errors='replace')[-2000:]}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child we started in its own session (process group = its pid), and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # still someone in the group?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def bench_mlflow(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, str]]:
    versions = {"mlflow": pkg_version("mlflow")}
    t = time.perf_counter()
    proc, url, _ = start_mlflow_server(work)
    print(f"  mlflow: server at {url} ready in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    try:
        rows = mlflow_workload(args, url, "mlflow")
    finally:
        stop_group(proc)
    return rows, versions


def start_runstream_up(work: Path) -> tuple[subprocess.Popen[bytes], str, Any]:
    """`runstream up` (processor + api in one process, embedded ClickHouse) on a LocalBroker, both on free loopback ports."""
    import urllib.request

    sys.path.insert(0, str(ROOT))
    from runstream.kafka_broker import LocalBroker

    home = work / "mlflow-runstream"
    home.mkdir(parents=True, exist_ok=True)
    kafka = f"127.0.0.1:{free_port()}"
    broker = LocalBroker(home, kafka)
    broker.start()
    port = free_port()
    env = {
        **os.environ,
        "RUNSTREAM_HOME": str(home),
        "RUNSTREAM_KAFKA": kafka,
        "RUNSTREAM_CLICKHOUSE": f"chdb://{home / 'clickhouse'}",
        "RUNSTREAM_TOPIC_PREFIX": f"peers{uuid.uuid4().hex[:8]}",
        "RUNSTREAM_PARTITIONS": "4",
        "RUNSTREAM_PROJECT": "peers",
        "RUNSTREAM_API": f"http://127.0.0.1:{port}",
    }
    log_path = home / "up.log"
    with open(log_path, "ab") as out:
        cmd = [sys.executable, "-m", "runstream.cli", "up", "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            broker.stop()
            raise RuntimeError(f"runstream up exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url, broker
        except OSError:
            pass
        time.sleep(0.3)
    stop_group(proc)
    broker.stop()
    raise RuntimeError(f"runstream up did not answer within 180s: {log_path.read_text(errors='replace')[-2000:]}")


async def answer_empty(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[dict[str, Any]], Any]) -> None:
    """An ASGI app that answers every request with `{}` at once: what the MLflow client costs on its own."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def client_floor(args: argparse.Namespace) -> Row:
    """The MLflow client's own cost of a synchronous 10-point log_batch: against a server (uvicorn,
    httptools, uvloop, in its own process) that answers `{}` at once. No tracking server can
    answer faster, so 10 points / this is the most any server reaches in the per-step mode."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    port = free_port()
    code = f"import sys, uvicorn; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import peers; "
    code += f"uvicorn.run(peers.answer_empty, host='127.0.0.1', port={port}, log_level='warning', loop='uvloop', http='httptools')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the {}-answering server did not start") from None
                time.sleep(0.1)
        client = MlflowClient(tracking_uri=url)
        ten = [f"m{j}" for j in range(args.metrics)]
        times = []
        for i in range(args.raw_samples * 5):
            ts = int(time.time() * 1000)
            metrics = [Metric(name, 0.1 * j, ts, i) for j, name in enumerate(ten)]
            t0 = time.perf_counter_ns()
            client.log_batch("0" * 32, metrics=metrics)
            times.append(time.perf_counter_ns() - t0)
    finally:
        stop_group(proc)
    times.sort()
    median_s = times[len(times) // 2] / 1e9
    row = new_row("mlflow-client-floor", f"log_batch (sync, 1 step = {args.metrics} points/request)", args)
    row.update(points=len(times) * args.metrics, pps=args.metrics / median_s, us_log10=median_s * 1e6)
    row["note"] = (
        f"the MLflow client alone: a server that answers {{}} at once; median of {len(times):,} calls "
        f"(p90 {times[int(len(times) * 0.9)] / 1e3:,.0f} µs); points/s = {args.metrics} / median call"
    )
    return row


def bench_mlflow_runstream(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, str]]:
    import json as jsonlib
    import urllib.request

    from mlflow import MlflowClient
    from mlflow.entities import Metric

    versions = {"mlflow (client)": pkg_version("mlflow")}
    t = time.perf_counter()
    proc, url, broker = start_runstream_up(work)
    print(f"  mlflow-runstream: runstream up at {url} ready in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    try:
        rows = mlflow_workload(args, url, "mlflow-runstream")
        # The read-after-write wait: get_run right after a log_batch of one step, against get_run with nothing pending.
        client = MlflowClient(tracking_uri=url)
        rid = client.create_run(client.create_experiment(f"raw-{uuid.uuid4().hex[:6]}")).info.run_id
        after_write, idle = [], []
        for i in range(args.raw_samples):
            ts = int(time.time() * 1000)
            client.log_batch(rid, metrics=[Metric(f"m{j}", 0.1 * j, ts, i) for j in range(args.metrics)])
            t0 = time.perf_counter()
            client.get_run(rid)
            t1 = time.perf_counter()
            client.get_run(rid)
            t2 = time.perf_counter()
            after_write.append(t1 - t0)
            idle.append(t2 - t1)
        after_write.sort()
        idle.sort()
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runstream/consistency", timeout=10) as resp:
            stats = jsonlib.loads(resp.read())
        med = len(idle) // 2
        note = (
            f"read-after-write: get_run right after a {args.metrics}-point log_batch {after_write[med] * 1e3:.1f} ms median"
            f" (p90 {after_write[int(len(after_write) * 0.9)] * 1e3:.1f} ms) vs {idle[med] * 1e3:.1f} ms with nothing pending,"
            f" over {len(idle)} samples; server-side over the whole run: {stats['waited']} of {stats['reads']} reads waited,"
            f" mean {stats['wait_ms_mean']:.1f} ms, max {stats['wait_ms_max']:.1f} ms, {stats['timeouts']} timeouts"
        )
        for row in rows:
            if row["mode"].startswith("log_batch (sync, 1 step"):
                row["note"] = (row["note"] + "; " if row["note"] else "") + note
    finally:
        stop_group(proc)
        broker.stop()
    rows.append(client_floor(args))
    return rows, versions


def mlflow_workload(args: argparse.Namespace, url: str, tool: str) -> list[Row]:
    """The MLflow client workload against a tracking server at url (MLflow's own, or runstream's MLflow API)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    rows: list[Row] = []
    mlflow.set_tracking_uri(url)
    client = MlflowClient(tracking_uri=url)
    names = [f"metric_{j}" for j in range(args.metrics)]
    full = args.runs * args.steps * args.metrics
    per_run = args.steps * args.metrics

    def history_points(run_ids: list[str]) -> int:
        return sum(len(client.get_metric_history(rid, name)) for rid in run_ids for name in names)

    def verify(row: Row, run_ids: list[str], t0: float, t_loop: float, points: int) -> None:
        # Sync calls have committed on return; async ones are flushed first. Read the last run back.
        got = history_points(run_ids[-1:])
        want = points - per_run * (len(run_ids) - 1)
        if got != want:
            raise RuntimeError(f"get_metric_history of the last run returned {got} points, expected {want}")
        t_done = time.perf_counter()
        finish_row(row, points, len(run_ids), t0, t_loop, t_done, full)
        row["verified"] = f"get_metric_history(last run) = {got:,}"

    # 1) log_metric: one HTTP request per point, on a time budget
    row = new_row(tool, "log_metric (sync, 1 point/request)", args)
    exp_id = client.create_experiment(f"per-call-{uuid.uuid4().hex[:6]}")
    run_ids: list[str] = []
    points = 0
    t0 = time.perf_counter()
    deadline = t0 + args.budget / 2
    done = False
    for r in range(args.runs):
        rid = client.create_run(exp_id, run_name=f"peers-{r}").info.run_id
        run_ids.append(rid)
        for step in range(args.steps):
            values = step_values(step, names)
            ts = int(time.time() * 1000)
            for name, value in values.items():
                client.log_metric(rid, name, value, timestamp=ts, step=step)
            points += args.metrics
            if time.perf_counter() > deadline:
                done = True
                break
        if done:
            break
        client.set_terminated(rid)
    t_loop = time.perf_counter()
    runs_whole = points // per_run
    verify(row, run_ids, t0, t_loop, points)
    row["runs_done"] = runs_whole
    row["subset"] = f"subset: {points:,} of {full:,} points ({points // args.metrics:,} steps) in a {args.budget / 2:.0f}s budget"
    row["note"] = f"mean log_metric round trip in this loop: {(t_loop - t0) / points * 1e6:,.0f} µs"
    rows.append(row)
    print(f"  {tool}: log_metric {points:,} points at {row['pps']:,.0f}/s", file=sys.stderr)

    # 2) log_batch of one step (what mlflow.log_metrics does), whole runs on a time budget
    def batch_workload(mode: str, batch_points: int, synchronous: bool, max_runs: int) -> Row:
        row = new_row(tool, mode, args)
        exp_id = client.create_experiment(f"{mode.split()[0]}-{batch_points}-{uuid.uuid4().hex[:6]}")
        run_ids: list[str] = []
        points = 0
        t0 = time.perf_counter()
        # Async calls return before the server has the points: stop producing earlier so the flush fits.
        deadline = t0 + (args.budget if synchronous else args.budget / 2)
        for r in range(max_runs):
            rid = client.create_run(exp_id, run_name=f"peers-{r}").info.run_id
            run_ids.append(rid)
            pending: list[Metric] = []
            for step in range(args.steps):
                ts = int(time.time() * 1000)
                pending.extend(Metric(name, value, ts, step) for name, value in step_values(step, names).items())
                if len(pending) >= batch_points or step == args.steps - 1:
                    client.log_batch(rid, metrics=pending, synchronous=synchronous)
                    pending = []
            points += per_run
            if synchronous:
                client.set_terminated(rid)
            if time.perf_counter() > deadline:
                break
        t_loop = time.perf_counter()
        if not synchronous:
            mlflow.flush_async_logging()
        verify(row, run_ids, t0, t_loop, points)
        return row

    row = batch_workload("log_batch (sync, 1 step = 10 points/request)", args.metrics, True, args.runs)
    rows.append(row)
    print(f"  {tool}: log_batch/step {row['points']:,} points at {row['pps']:,.0f}/s", file=sys.stderr)
    row1k = batch_workload("log_batch (sync, 1,000 points/request, user-side buffering)", 1000, True, args.runs)
    rows.append(row1k)
    print(f"  {tool}: log_batch/1000 {row1k['points']:,} points at {row1k['pps']:,.0f}/s", file=sys.stderr)
    # Async calls return at once and queue; the queue drains at ~1/6 of the 1,000-point rate above (measured:
    # 642 vs 3,702 points/s), so bound it to what drains in about half a budget, else the flush runs for minutes.
    async_runs = max(1, min(args.runs, int((row1k["pps"] or 0) / 6 * args.budget / 2 / per_run)))
    row_async = batch_workload("log_batch (async, synchronous=False, 10 points/call)", args.metrics, False, async_runs)
    rows.append(row_async)
    print(f"  {tool}: async log_batch {row_async['points']:,} points at {row_async['pps']:,.0f}/s", file=sys.stderr)

    # 3) call cost: µs per call in the training thread
    ten = {f"m{j}": 0.1 * j for j in range(10)}
    exp_id = client.create_experiment(f"call-cost-{uuid.uuid4().hex[:6]}")
    # sync: log_metric -> the per-call row, log_batch of 10 -> the one-step row; async: both -> the async row
    for single_row, multi_row, synchronous in ((rows[0], row, True), (row_async, row_async, False)):
        rid = client.create_run(exp_id).info.run_id

        def single(lo: int, hi: int, rid: str = rid, synchronous: bool = synchronous) -> None:
            for i in range(lo, hi):
                client.log_metric(rid, "loss", i * 0.001, step=i, synchronous=synchronous)

        def multi(lo: int, hi: int, rid: str = rid, synchronous: bool = synchronous) -> None:
            for i in range(lo, hi):
                ts = int(time.time() * 1000)
                client.log_batch(rid, metrics=[Metric(k, v, ts, i) for k, v in ten.items()], synchronous=synchronous)

        chunk = 20 if synchronous else 200
        # async: a tenth of the calls, so that the queue they leave drains in seconds
        calls = args.calls if synchronous else args.calls // 10
        single_row["log_calls"], ns = timed_chunks(single, calls, args.cost_budget, chunk=chunk)
        single_row["us_log"] = ns / 1e3
        multi_row["log10_calls"], ns = timed_chunks(multi, calls // 10, args.cost_budget, chunk=chunk)
        multi_row["us_log10"] = ns / 1e3
        if not synchronous:
            mlflow.flush_async_logging()
    row1k["note"] = "per-call cost: one 1,000-point request, see points/s"
    return rows


# --- Aim ---


def bench_aim(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, str]]:
    import aim
    from aim.sdk.index_manager import RepoIndexManager

    versions = {"aim": pkg_version("aim")}
    repo_path = work / "aim"
    repo_path.mkdir(parents=True, exist_ok=True)
    names = [f"metric_{j}" for j in range(args.metrics)]
    full = args.runs * args.steps * args.metrics
    per_run = args.steps * args.metrics
    row = new_row("aim", "run.track({...}, step) (embedded repo)", args)
    hashes: list[str] = []
    points = 0
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    for r in range(args.runs):
        # Defaults but for terminal capture (our own stderr); system metrics are tracked as by default.
        run = aim.Run(repo=str(repo_path), experiment="peers", capture_terminal_logs=False)
        run.name = f"peers-{r}"
        hashes.append(run.hash)
        for step in range(args.steps):
            run.track(step_values(step, names), step=step)
        run.close()
        points += per_run
        if time.perf_counter() > deadline:
            break
    t_loop = time.perf_counter()
    # Readable from the repo: index the runs (what `aim up`'s index thread does), then read every point back.
    repo = aim.Repo(str(repo_path))
    manager = RepoIndexManager.get_index_manager(repo)
    for h in hashes:
        manager.index(h)
    repo = aim.Repo(str(repo_path))
    got = 0
    for run in repo.iter_runs():
        for metric in run.metrics():
            if not metric.name.startswith("__system__"):
                got += len(metric.values.sparse_numpy()[1])
    t_done = time.perf_counter()
    if got != points:
        raise RuntimeError(f"aim.Repo read back {got} points, expected {points}")
    finish_row(row, points, len(hashes), t0, t_loop, t_done, full)
    row["verified"] = f"read back through aim.Repo = {got:,}"
    print(f"  aim: {points:,} points at {row['pps']:,.0f}/s", file=sys.stderr)

    run = aim.Run(repo=str(repo_path), experiment="call-cost", capture_terminal_logs=False)
    ten = {f"m{j}": 0.1 * j for j in range(10)}
    track = run.track

    def single(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            track(i * 0.001, name="loss")

    def multi(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            track(ten, step=i)

    row["log_calls"], ns = timed_chunks(single, args.calls, args.cost_budget, chunk=200)
    row["us_log"] = ns / 1e3
    row["log10_calls"], ns = timed_chunks(multi, args.calls // 10, args.cost_budget, chunk=100)
    row["us_log10"] = ns / 1e3
    run.close()
    return [row], versions


# --- Weights & Biases (offline) ---


def bench_wandb(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, str]]:
    os.environ.update(QUIET_ENV)
    import wandb

    versions = {"wandb": pkg_version("wandb")}
    folder = work / "wandb"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"metric_{j}" for j in range(args.metrics)]
    full = args.runs * args.steps * args.metrics
    per_run = args.steps * args.metrics
    row = new_row("wandb", "run.log({...}, step) (offline)", args)
    written = 0
    runs_done = 0
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    for r in range(args.runs):
        run = wandb.init(project="peers", name=f"peers-{r}", dir=str(folder), mode="offline")
        for step in range(args.steps):
            run.log(step_values(step, names), step=step)
        run.finish()  # returns once the run's files are written
        runs_done += 1
        if time.perf_counter() > deadline:
            break
    t_loop = time.perf_counter()
    files = list((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    written = sum(1 for f in files if f.stat().st_size > 0)
    if written != runs_done:
        raise RuntimeError(f"{written} non-empty .wandb files for {runs_done} finished runs")
    points = runs_done * per_run
    finish_row(row, points, runs_done, t0, t_loop, t_loop, full)
    row["verified"] = f"{written} .wandb files written by finish()"
    print(f"  wandb: {points:,} points at {row['pps']:,.0f}/s", file=sys.stderr)

    ten = {f"m{j}": 0.1 * j for j in range(10)}
    run = wandb.init(project="peers", name="call-cost-single", dir=str(folder), mode="offline")
    log = run.log

    def single(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            log({"loss": i * 0.001})

    row["log_calls"], ns = timed_chunks(single, args.calls, args.cost_budget, chunk=200)
    row["us_log"] = ns / 1e3
    run.finish()
    run = wandb.init(project="peers", name="call-cost-multi", dir=str(folder), mode="offline")
    log = run.log

    def multi(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            log(ten, step=i)

    row["log10_calls"], ns = timed_chunks(multi, args.calls // 10, args.cost_budget, chunk=200)
    row["us_log10"] = ns / 1e3
    run.finish()
    return [row], versions


BENCHES: dict[str, Callable[[argparse.Namespace, Path], tuple[list[Row], dict[str, str]]]] = {
    "runstream": bench_runstream,
    "mlflow": bench_mlflow,
    "mlflow-runstream": bench_mlflow_runstream,
    "aim": bench_aim,
    "wandb": bench_wandb,
}


def worker_main(args: argparse.Namespace) -> int:
    """In the child: run one tool, write {rows, versions} or {error} to --out."""
    os.environ.update(QUIET_ENV)
    work = Path(args.workdir)
    out: dict[str, Any]
    try:
        rows, versions = BENCHES[args.worker](args, work)
        out = {"rows": rows, "versions": versions}
    except BaseException as exc:  # report, never hang the parent
        out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    Path(args.out).write_text(json.dumps(out))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip atexit hooks of the tools (a client flush on exit must not hang the child)


# --- the parent: pick an interpreter per tool, run the workers, print the table ---


def importable(python: Path, module: str, env: dict[str, str]) -> tuple[bool, str]:
    try:
        res = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return res.returncode == 0, (res.stderr.strip().splitlines() or [""])[-1]


def peers_venv_python(tool: str, env: dict[str, str]) -> tuple[Path | None, str]:
    """bench/.venv-peers: a separate venv for a peer that cannot live in the project venv."""
    python = PEERS_VENV / "bin" / "python"
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True, capture_output=True, text=True, timeout=300)
        ok, err = importable(python, tool, env)
        if not ok:
            res = subprocess.run([str(python), "-m", "pip", "install", "-q", tool], capture_output=True, text=True, timeout=900)
            if res.returncode != 0:
                return None, f"pip install {tool} into {PEERS_VENV} failed: {res.stderr.strip()[-1500:]}"
            ok, err = importable(python, tool, env)
        return (python, "") if ok else (None, f"import {tool} in {PEERS_VENV} failed: {err}")
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"creating {PEERS_VENV} failed: {exc}"


def run_tool(tool: str, args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    python = Path(sys.executable)
    module = "ingest" if tool == "runstream" else tool.split("-")[0]
    ok, err = importable(python, module, env)
    if not ok and tool != "runstream":
        print(f"  {tool}: does not import in {python} ({err}); trying {PEERS_VENV}", file=sys.stderr)
        alt, err2 = peers_venv_python(tool, env)
        if alt is None:
            return {"error": f"import {module} failed in the project venv ({err}) and {err2}"}
        python = alt
    elif not ok:
        return {"error": f"import {module} failed: {err}"}
    out = work / f"{tool}.json"
    tool_dir = work / tool
    tool_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", tool, "--out", str(out), "--workdir", str(work)]
    cmd += ["--runs", str(args.runs), "--steps", str(args.steps), "--metrics", str(args.metrics), "--budget", str(args.budget)]
    cmd += ["--cost-budget", str(args.cost_budget), "--calls", str(args.calls), "--settle", str(args.settle), "--raw-samples", str(args.raw_samples)]
    if args.kafka:
        cmd += ["--kafka", args.kafka]
    timeout = 8 * args.budget + 8 * args.cost_budget + 600
    t = time.perf_counter()
    # The tools' own chatter (e.g. MLflow's "View run" lines) goes to stderr: stdout is the table.
    proc = subprocess.Popen(cmd, cwd=tool_dir, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, start_new_session=True)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return {"error": f"timed out after {timeout:.0f}s"}
    stop_group(proc)  # whatever the tool left running in the worker's session (e.g. wandb-core)
    if not out.exists():
        return {"error": f"worker exited with {proc.returncode} and wrote no result"}
    result: dict[str, Any] = json.loads(out.read_text())
    result["python"] = str(python)
    result["wall_s"] = time.perf_counter() - t
    return result


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "—" if x is None else format(x, spec)


def ratio(x: float | None, base: float | None) -> str:
    if x is None or not base:
        return "—"
    r = x / base
    return f"{r:.3g}×"


def table(rows: list[Row]) -> str:
    base = next((r for r in rows if r["tool"] == "runstream"), None)
    head = (
        "| tool | mode | points measured | s in training loop | s to queryable | points/s | µs per log() | µs per 10-value call "
        "| points/s vs runstream | µs/log() vs runstream | µs/10-value vs runstream |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['tool']} | {r['mode']} | {r['points']:,}{'*' if r['subset'] else ''} | {fmt(r['loop_s'], '.2f')} | {fmt(r['total_s'], '.2f')} "
            f"| {fmt(r['pps'])} | {fmt(r['us_log'], '.2f')} | {fmt(r['us_log10'], '.2f')} "
            f"| {ratio(r['pps'], base and base['pps'])} | {ratio(r['us_log'], base and base['us_log'])} "
            f"| {ratio(r['us_log10'], base and base['us_log10'])} |"
        )
    return "\n".join(lines)


def mlflow_ratios(rows: list[Row]) -> list[str]:
    """The MLflow client against runstream over the same client against MLflow's server, mode by mode."""
    theirs = {r["mode"]: r for r in rows if r["tool"] == "mlflow"}
    out = []
    for r in rows:
        base = theirs.get(r["mode"]) if r["tool"] in ("mlflow-runstream", "mlflow-client-floor") else None
        if base is None:
            continue
        bits = [f"points/s {ratio(r['pps'], base['pps'])}"]
        if r["us_log"] and base["us_log"]:
            bits.append(f"µs per log_metric call {fmt(r['us_log'], ',.0f')} vs {fmt(base['us_log'], ',.0f')}")
        if r["us_log10"] and base["us_log10"]:
            bits.append(f"µs per 10-value call {fmt(r['us_log10'], ',.0f')} vs {fmt(base['us_log10'], ',.0f')}")
        against = "a server that answers at once (the client's floor)" if r["tool"] == "mlflow-client-floor" else "runstream"
        out.append(f"- MLflow client, {against} vs MLflow's server, {r['mode']}: " + "; ".join(bits))
    return out


def notes(rows: list[Row]) -> str:
    out = mlflow_ratios(rows)
    for r in rows:
        bits = [b for b in (r["subset"], r["verified"] and f"verified: {r['verified']}", r["note"]) if b]
        if r["log_calls"]:
            bits.append(f"call cost over {r['log_calls']:,} log() and {r['log10_calls']:,} 10-value calls")
        out.append(f"- {r['tool']} / {r['mode']}: " + "; ".join(bits))
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--metrics", type=int, default=10)
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(TOOLS)}")
    p.add_argument("--skip", default="", help="comma-separated tools to leave out")
    p.add_argument("--kafka", default="", help="use this broker (HOST:PORT) instead of starting a LocalBroker")
    p.add_argument(
        "--processor",
        choices=("process", "in-process"),
        default="process",
        help="runstream's processor in its own process, as deployed (default), or on a loop in the training process",
    )
    p.add_argument("--budget", type=float, default=40.0, help="seconds per peer mode for the workload; slower tools do a subset of whole runs")
    p.add_argument("--cost-budget", type=float, default=5.0, help="seconds per call-cost loop for peers")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        choices=(0, 1),
        help="runstream: one untimed pass of the workload first (a cold broker JVM costs ~2x the CPU per point); 0 = time the first pass",
    )
    p.add_argument("--settle", type=float, default=240.0, help="seconds runstream may take after the flush until every point is queryable")
    p.add_argument("--calls", type=int, default=200_000, help="log() calls in the call-cost loop (10-value calls: a tenth)")
    p.add_argument("--raw-samples", type=int, default=200, help="mlflow-runstream: get_run calls timed right after a write and with nothing pending")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the temp folder with every tool's data")
    p.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    only = [t.strip() for t in args.only.split(",") if t.strip()] or list(TOOLS)
    skip = {t.strip() for t in args.skip.split(",") if t.strip()}
    unknown = (set(only) | skip) - set(TOOLS)
    if unknown:
        print(f"unknown tool(s): {', '.join(sorted(unknown))}; known: {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    tools = [t for t in TOOLS if t in only and t not in skip]
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(ROOT)}
    work = Path(tempfile.mkdtemp(prefix="runstream-peers-"))
    full = args.runs * args.steps * args.metrics
    started = time.perf_counter()
    shape = f"{args.runs} runs x {args.steps:,} steps x {args.metrics} metrics = {full:,} points"
    print(f"workload: {shape}; budget {args.budget:.0f}s per peer mode", file=sys.stderr)
    rows: list[Row] = []
    versions: dict[str, str] = {}
    errors: dict[str, str] = {}
    try:
        for tool in tools:
            print(f"{tool} ...", file=sys.stderr)
            result = run_tool(tool, args, work, env)
            if "error" in result:
                errors[tool] = result["error"]
                print(f"  {tool}: SKIPPED: {result['error']}", file=sys.stderr)
                if result.get("traceback"):
                    print(result["traceback"], file=sys.stderr)
                continue
            rows.extend(result["rows"])
            versions.update(result["versions"])
            if Path(result["python"]) != Path(sys.executable):
                versions[tool] += f" (in {PEERS_VENV.name})"
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    mach = machine()
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    print()
    print(f"machine: {mach}")
    print(f"versions: {vers}")
    print(f"workload: {shape} (* = subset, see notes); bench wall time {elapsed:.0f}s")
    print()
    print(table(rows))
    print()
    print(notes(rows))
    for tool, err in errors.items():
        print(f"- {tool}: not run: {err}")
    if args.json:
        report = {"machine": mach, "versions": versions, "workload": vars(args) | {"points": full}, "rows": rows, "errors": errors, "wall_s": elapsed}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
