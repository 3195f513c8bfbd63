"""End-to-end ingest benchmark: client -> Kafka -> processor(s) -> rows queryable in ClickHouse.

    .venv/bin/python bench/ingest.py [--runs 100] [--steps 1000] [--metrics 10] [--processors 1,2] [--repeat 2]

Each processor is a `runstream processor` process with an embedded engine of its own
(with two, they split the partitions like the shards of a cluster; the figure counts
their union). Prints points/s end to end (first log call until every point is stored,
from the processors' points_written counters, then re-counted in each engine), the
client's cost per call in the training thread, and the machine.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ProcessorProcess, free_port, machine  # noqa: E402
from ingest import Experiment  # noqa: E402
from runstream.kafka_broker import LocalBroker  # noqa: E402


def client_cost(settings, calls: int = 200_000) -> tuple[float, float]:
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


def end_to_end(settings, count, runs: int, steps: int, metrics: int, threads: int) -> tuple[int, float, float, list[str]]:  # type: ignore[no-untyped-def]
    exp = Experiment("bench-ingest", settings=settings)
    handles = [exp.start_logging(name=f"bench-{i}", capture_output=False) for i in range(runs)]
    names = [f"metric_{j}" for j in range(metrics)]
    baseline = count()
    total = runs * steps * metrics

    def work(chunk: list) -> None:
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
    while count() < baseline + total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count() - baseline:,} of {total:,} points stored")
        time.sleep(0.01)
    t_done = time.perf_counter()
    for run in handles:
        run.complete()
    return total, t_done - t0, t_logged - t0, [r.id for r in handles]


def configuration(broker_kafka: str, home: Path, instances: int, args: argparse.Namespace) -> list[float]:
    """End-to-end runs with this many processor instances (fresh topic and group)."""
    from runstream.config import Settings

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings().with_(home=home, kafka=broker_kafka, topic_prefix=prefix, partitions=8, api_key=None)
    procs = [ProcessorProcess(settings, home / f"{prefix}-shard{i}", group=f"g-{prefix}", name=f"{prefix}-p{i}") for i in range(instances)]
    ids: list[str] = []
    rates = []
    try:

        def count() -> int:
            return sum(p.points_written() for p in procs)

        end_to_end(settings, count, runs=4, steps=100, metrics=args.metrics, threads=1)  # topics, group, first inserts
        for i in range(args.repeat):
            total, elapsed, logging_time, run_ids = end_to_end(settings, count, args.runs, args.steps, args.metrics, args.threads)
            ids += run_ids
            rates.append(total / elapsed)
            print(
                f"{instances} processor(s), end to end #{i + 1}: {total:,} points from {args.runs} runs in {elapsed:.2f} s = "
                f"{total / elapsed:,.0f} points/s (training threads spent {logging_time:.2f} s logging)",
                flush=True,
            )
        shares = [p.points_written() for p in procs]
    finally:
        for p in procs:
            p.stop()
    stored = [ProcessorProcess.count_rows(p.engine, ids) for p in procs]
    rows, distinct = sum(r for r, _ in stored), sum(d for _, d in stored)
    want = args.repeat * args.runs * args.steps * args.metrics
    print(
        f"{instances} processor(s): stored {rows:,} rows of {want:,} ({distinct:,} distinct (run, metric, step)); "
        f"points written per instance: {', '.join(f'{x:,}' for x in shares)}" + ("" if rows == distinct == want else "  <-- MISMATCH")
    )
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--threads", type=int, default=4, help="training threads sharing the runs")
    parser.add_argument("--processors", default="1,2", help="processor instance counts to compare")
    parser.add_argument("--kafka", help="use this broker instead of starting one")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="runstream-bench-"))
    broker = None
    kafka = args.kafka
    if not kafka:
        kafka = f"127.0.0.1:{free_port()}"
        broker = LocalBroker(home, kafka)
        broker.start()
    try:
        from runstream.config import Settings

        print(f"machine: {machine()}")
        print(f"broker: {kafka} ({'started here' if broker else 'given'}); each processor: its own process and embedded engine")
        settings = Settings().with_(home=home, kafka=kafka, topic_prefix=f"cost{uuid.uuid4().hex[:8]}", api_key=None)
        per_log, per_metrics = client_cost(settings)
        print(f"client cost (shipper running, no processor): log() {per_log / 1000:.2f} us/call; ", end="")
        print(f"log_metrics(10 values) {per_metrics / 1000:.2f} us/call")
        best = {}
        for n in [int(x) for x in args.processors.split(",") if x.strip()]:
            best[n] = max(configuration(kafka, home, n, args))
        for n, rate in best.items():
            print(f"best end to end with {n} processor(s): {rate:,.0f} points/s" + (f" ({rate / best[1]:.2f}x one)" if 1 in best and n != 1 else ""))
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
