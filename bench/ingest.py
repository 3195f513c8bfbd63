"""End-to-end ingest benchmark: client -> Kafka -> processor -> rows queryable in ClickHouse.

    .venv/bin/python bench/ingest.py [--runs 100] [--steps 1000] [--metrics 10] [--kafka HOST:PORT]

Prints points/s end to end (first log call until every point is counted in
ClickHouse), the client's cost per call in the training thread, and the machine.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Pipeline, machine  # noqa: E402
from ingest import Experiment  # noqa: E402
from processor.store import get_store  # noqa: E402


def client_cost(settings, calls: int = 200_000) -> tuple[float, float]:
    """ns per log() and per log_metrics() of 10 values, shipper running, nothing blocking."""
    exp = Experiment("bench-cost", settings=settings)
    run = exp.start_logging()
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


def end_to_end(pipe: Pipeline, runs: int, steps: int, metrics: int, threads: int) -> tuple[int, float, float]:
    exp = Experiment("bench-ingest", settings=pipe.settings)
    handles = [exp.start_logging(name=f"bench-{i}") for i in range(runs)]
    names = [f"metric_{j}" for j in range(metrics)]
    baseline = pipe.count()
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
    for run in handles:
        run.flush()
    t_acked = time.perf_counter()
    t_done = pipe.wait_count(baseline + total)
    for run in handles:
        run.complete()
    return total, t_done - t0, t_logged - t0 if t_acked else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--threads", type=int, default=4, help="training threads sharing the runs")
    parser.add_argument("--kafka", help="use this broker instead of starting one")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    pipe = Pipeline(args.kafka)
    try:
        store = get_store(f"chdb://{pipe.home / 'clickhouse'}")
        pipe.start_processor(store)
        print(f"machine: {machine()}")
        print(f"broker: {pipe.settings.kafka} ({'started here' if pipe.broker else 'given'}), ClickHouse: {store.dsn}")
        # Warm-up: topic creation, group join, first inserts.
        end_to_end(pipe, runs=4, steps=100, metrics=args.metrics, threads=1)
        per_log, per_metrics = client_cost(pipe.settings)
        print(f"client cost: log() {per_log / 1000:.2f} us/call; log_metrics(10 values) {per_metrics / 1000:.2f} us/call")
        results = []
        for i in range(args.repeat):
            total, elapsed, logging_time = end_to_end(pipe, args.runs, args.steps, args.metrics, args.threads)
            rate = total / elapsed
            results.append(rate)
            print(
                f"end to end #{i + 1}: {total:,} points from {args.runs} runs in {elapsed:.2f} s = {rate:,.0f} points/s "
                f"(training threads spent {logging_time:.2f} s logging)"
            )
        print(f"best end-to-end: {max(results):,.0f} points/s")
    finally:
        pipe.close()


if __name__ == "__main__":
    main()
