"""End-to-end ingest benchmark: client -> Kafka -> processor(s) -> rows queryable in ClickHouse.

    .venv/bin/python bench/ingest.py [--runs 100] [--steps 1000] [--metrics 10] [--threads 4]
                                     [--processors 1,2] [--engines chdb,http] [--in-process]
                                     [--rounds 3] [--repeat 2] [--kafka HOST:PORT]

Each processor is a `runstream processor` process, all in one consumer group. On the
`chdb` engine each has an embedded engine of its own (with two they split the partitions
like the shards of a cluster; the figure counts their union); on `http` they share one
database of a ClickHouse server started here (`runstream clickhouse`'s server, on this
machine: client, broker, processors and server share its cores). Every configuration
gets a fresh topic, group and database. `--in-process` adds the earlier set-up: one Processor on an event loop inside the
benchmark (training) process, sharing its GIL with the training threads.

The configurations take turns, --rounds times (fresh processors each round), --repeat
measured runs each time, after a warm-up. Prints the client's cost per call in the
training thread, points/s end to end of every run and the median and best per
configuration (first log call until every point is stored, from the processors'
points_written counters, which count a point once its insert has returned), an exact
read-back of every stored point after the processors stop (each shard's keys
(run, metric, step), their union against the workload: none missing, none twice within
or across shards), and the machine.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Pipeline, ProcessorProcess, cpu_seconds, free_port, machine, point_keys, shard_point_keys, union_check  # noqa: E402
from runstream import Experiment, Run  # noqa: E402
from runstream.clickhouse_server import LocalClickHouse  # noqa: E402
from runstream.config import Settings  # noqa: E402
from runstream.ingest.shipper import get_shipper  # noqa: E402
from runstream.kafka_broker import LocalBroker  # noqa: E402


def client_cost(settings: Settings, calls: int = 200_000) -> tuple[float, float]:
    """ns per log() and per log_metrics() of 10 values, shipper running, nothing blocking."""
    exp = Experiment("bench-cost", settings=settings)
    run = exp.start_logging(capture_output=False)
    run.log("warm-up", 1.0)
    run.flush()  # topic created and producer connected before the clock starts
    gc.collect()
    t = time.perf_counter_ns()
    for _ in range(calls):
        run.log("loss", 0.5)
    per_log = (time.perf_counter_ns() - t) / calls
    metrics = {f"m{j}": 0.1 * j for j in range(10)}
    n = calls // 10
    t = time.perf_counter_ns()
    for i in range(n):
        run.log_metrics(metrics, step=i)
    per_metrics = (time.perf_counter_ns() - t) / n
    run.complete()
    return per_log, per_metrics


def end_to_end(
    settings: Settings, count: Callable[[], int], runs: int, steps: int, metrics: int, threads: int
) -> tuple[int, float, float, list[str]]:
    """(points, seconds from the first log call until count() has them all, seconds the training threads spent logging, run ids)."""
    exp = Experiment("bench-ingest", settings=settings)
    handles = [exp.start_logging(name=f"bench-{i}", capture_output=False) for i in range(runs)]
    names = [f"metric_{j}" for j in range(metrics)]
    baseline = count()
    total = runs * steps * metrics

    def work(chunk: list[Run]) -> None:
        for step in range(steps):
            for run in chunk:
                run.log_metrics({n: step * 0.001 + j for j, n in enumerate(names)}, step=step)

    chunks = [handles[i::threads] for i in range(threads)]
    t0 = time.perf_counter()
    workers = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    t_logged = time.perf_counter()
    deadline = time.monotonic() + 300
    while (stored := count() - baseline) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {stored:,} of {total:,} points stored after 300 s")
        time.sleep(0.01)
    t_done = time.perf_counter()
    for run in handles:
        run.complete()
    return total, t_done - t0, t_logged - t0, [r.id for r in handles]


class _InProcess:
    """The earlier set-up: one Processor on an event loop inside this (the training) process."""

    def __init__(self, kafka: str, home: Path) -> None:
        from runstream.storage.store import get_store

        self.pipe = Pipeline(kafka, home=home)
        self.store = get_store(f"chdb://{home / 'inprocess-engine'}")  # one engine per process: the same one every round
        self.processor = self.pipe.start_processor(self.store, publish_live=True)  # as `runstream processor` does

    def points_written(self) -> int:
        return int(self.processor.stats.points_written)


def configuration(
    kafka: str,
    home: Path,
    instances: int,
    in_process: bool,
    round_no: int,
    args: argparse.Namespace,
    server: str | None = None,
    server_pid: int | None = None,
) -> list[float]:
    """One round of a configuration: fresh topic, group and engines (or a fresh database on
    `server`), a warm-up, then args.repeat end-to-end runs with this many processor instances,
    then the exact read-back; points/s of each run."""
    label = "1 processor in the training process" if in_process else f"{instances} processor process{'es' if instances > 1 else ''}"
    label += ", ClickHouse server" if server else ", embedded engine"
    procs: list[ProcessorProcess] = []
    dsn: str | None = None
    inproc: _InProcess | None = None
    if in_process:
        inproc = _InProcess(kafka, home)
        settings = inproc.pipe.settings
    else:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        settings = Settings().with_(home=home, kafka=kafka, topic_prefix=prefix, partitions=8, api_key=None)
    ids: list[str] = []
    rates = []
    if server:
        import clickhouse_connect

        clickhouse_connect.get_client(dsn=f"{server}/default").command(f"CREATE DATABASE {settings.topic_prefix}")
        dsn = f"{server}/{settings.topic_prefix}"
    try:
        for i in range(instances if not in_process else 0):
            procs.append(
                ProcessorProcess(
                    settings,
                    home / f"{settings.topic_prefix}-shard{i}",
                    group=f"g-{settings.topic_prefix}",
                    name=f"{settings.topic_prefix}-p{i}",
                    dsn=dsn,
                )
            )

        def count() -> int:
            if inproc is not None:
                return inproc.points_written()
            return sum(p.points_written() for p in procs)

        end_to_end(settings, count, runs=4, steps=100, metrics=args.metrics, threads=1)  # topics, group, first inserts
        for i in range(args.repeat):
            # CPU of the processors and of the server across the run: the figures sizing (docs/deployment.md) works from.
            cpu_before = [cpu_seconds(p.pid) for p in procs], cpu_seconds(server_pid) if server_pid else 0.0
            total, elapsed, logging_time, run_ids = end_to_end(settings, count, args.runs, args.steps, args.metrics, args.threads)
            cpu_procs = sum(cpu_seconds(p.pid) for p in procs) - sum(cpu_before[0])
            cpu_server = (cpu_seconds(server_pid) if server_pid else 0.0) - cpu_before[1]
            ids += run_ids
            rates.append(total / elapsed)
            cpu = (
                ""
                if in_process
                else f"; CPU per million points: processors {cpu_procs * 1e6 / total:.2f} s"
                + (f", ClickHouse server {cpu_server * 1e6 / total:.2f} s" if server_pid else "")
            )
            print(
                f"{label}, round {round_no} run {i + 1}: {total:,} points from {args.runs} runs in {elapsed:.2f} s = "
                f"{total / elapsed:,.0f} points/s (training threads spent {logging_time:.2f} s logging){cpu}",
                flush=True,
            )
        shares = [p.points_written() for p in procs] if inproc is None else [inproc.points_written()]
    finally:
        get_shipper(settings).close()  # this configuration's client: nothing left to send, no reconnects once the broker stops
        codes = [p.stop() for p in procs]
        if inproc is not None:
            inproc.pipe.close()
    if inproc is not None:
        keys = [point_keys(inproc.store, ids, args.metrics, args.steps)]
    elif dsn is not None:
        from runstream.storage.store import get_store

        keys = [point_keys(get_store(dsn), ids, args.metrics, args.steps)]  # one database: the union is the table
    else:
        keys = [shard_point_keys(p.engine, ids, args.metrics, args.steps) for p in procs]
    want = len(ids) * args.steps * args.metrics
    check = union_check(keys, want)
    ok = check["rows"] == check["distinct"] == want and not (check["missing"] or check["unexpected"])
    exits = "" if inproc is not None else f"; exit codes {codes}"
    print(
        f"{label}, round {round_no}: read back after stopping: {check['rows']:,} rows for {want:,} points logged, {check['distinct']:,} distinct "
        f"(run, metric, step) in the union; {check['twice_within_a_shard']} twice within a shard, {check['in_two_shards']} in two shards, "
        f"{check['missing']} missing; points_written per instance (incl. warm-up): {', '.join(f'{x:,}' for x in shares)}{exits}"
        + ("" if ok else "  <-- MISMATCH"),
        flush=True,
    )
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=10, help="metrics per step (at most 10)")
    parser.add_argument("--threads", type=int, default=4, help="training threads sharing the runs")
    parser.add_argument("--processors", default="1,2", help="processor process counts to compare (default 1,2)")
    parser.add_argument("--engines", default="chdb", help="chdb (embedded, one per processor), http (one ClickHouse server), or both: chdb,http")
    parser.add_argument("--in-process", action="store_true", help="also run one processor inside the training process (the earlier set-up)")
    parser.add_argument("--kafka", help="use this broker instead of starting one")
    parser.add_argument("--repeat", type=int, default=2, help="measured runs per round of a configuration")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each configuration once per round with fresh processors")
    args = parser.parse_args()
    if not 1 <= args.metrics <= 10:
        parser.error("--metrics must be 1..10 (the read-back keys metric_<j> by one digit)")
    counts = [int(x) for x in args.processors.split(",") if x.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or set(engines) - {"chdb", "http"}:
        parser.error("--engines takes chdb, http or chdb,http")

    home = Path(tempfile.mkdtemp(prefix="runstream-bench-"))
    broker = None
    kafka = args.kafka
    if not kafka:
        kafka = f"127.0.0.1:{free_port()}"
        broker = LocalBroker(home, kafka)
        broker.start()
    server: LocalClickHouse | None = None
    try:
        if "http" in engines:
            server = LocalClickHouse(home, free_port())
            server.start()
        print(f"machine: {machine()}")
        print(
            f"broker: {kafka} ({'started here' if broker else 'given'}); workload {args.runs} runs x {args.steps:,} steps x {args.metrics} metrics "
            f"from {args.threads} training threads; "
            f"{args.rounds} rounds x {args.repeat} runs per configuration; each processor: `runstream processor`; engines {', '.join(engines)}"
            + (f" (server {server.url})" if server else ""),
            flush=True,
        )
        settings = Settings().with_(home=home, kafka=kafka, topic_prefix=f"cost{uuid.uuid4().hex[:8]}", api_key=None)
        per_log, per_metrics = client_cost(settings)
        get_shipper(settings).close()
        cost = f"log() {per_log / 1000:.2f} us/call; log_metrics(10 values) {per_metrics / 1000:.2f} us/call"
        print(f"client cost (shipper running, no processor): {cost}")
        keys = [(engine, n) for engine in engines for n in counts]
        rates: dict[str, list[float]] = {f"{engine}:{n}": [] for engine, n in keys}
        # Rounds interleave the configurations, so drift in the machine's load does not favour one.
        for round_no in range(1, args.rounds + 1):
            for engine, n in keys:
                on_server = engine == "http" and server is not None
                url, pid = (server.url, server.pid()) if on_server and server else (None, None)
                rates[f"{engine}:{n}"] += configuration(kafka, home, n, False, round_no, args, server=url, server_pid=pid)
        if args.in_process:  # after the others: its engine stays loaded (and merging) in this process once it has run
            rates["in-process"] = []
            for round_no in range(1, args.rounds + 1):
                rates["in-process"] += configuration(kafka, home, 1, True, round_no, args)
        base_key = f"{engines[0]}:{counts[0]}" if counts else None
        one = statistics.median(rates[base_key]) if base_key and rates.get(base_key) else None
        one_best = max(rates[base_key]) if base_key and rates.get(base_key) else None
        for key, got in rates.items():
            if key == "in-process":
                label = "1 processor in the training process, embedded engine"
            else:
                engine, n = key.split(":")
                label = f"{n} processor process(es), {'ClickHouse server' if engine == 'http' else 'embedded engine'}"
            med, top = statistics.median(got), max(got)
            ratio = f" ({med / one:.2f}x / {top / one_best:.2f}x the {base_key} configuration)" if one and one_best and key != base_key else ""
            print(f"end to end, {label}: median {med:,.0f}, best {top:,.0f} points/s over {len(got)} runs{ratio}")
    finally:
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
