"""Benchmark of the analytics reads on the embedded engine (issue 4).

Writes RUNS x METRICS x STEPS points (default 10,000 x 10 x 1,000 = 100 million)
plus one run with a 1,000,000-step metric straight into an embedded ClickHouse
under --data (kept between invocations; regenerated when the shape differs or
with --regen), then times through the real api (FastAPI app, in process):

- leaderboard over all runs (one metric, last value, top 10);
- compare of 100 runs x all metrics;
- the 1,000,000-point series downsampled to 1,000 points (LTTB);
- grouped mean +- std over 1,000 runs (one experiment, 4 groups, 1,000 steps).

Each query: one warm-up, then --reps repetitions; prints p50 and max in ms
against the 500 ms bar, and the machine.

    .venv/bin/python bench/query.py                       # the full size
    .venv/bin/python bench/query.py --runs 500 --steps 200  # a quick try
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runstream.storage.store import Store, get_store  # noqa: E402

BAR_MS = 500.0
PROJECT = "bench"
RUNS_PER_EXPERIMENT = 1000
BIG_RUN, BIG_METRIC, BIG_STEPS = "bench-big", "signal", 1_000_000
TS0_MS = 1_700_000_000_000


def machine(store: Store) -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        mem = "? RAM"
    version = store.query_rows("SELECT version()")[0][0]
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {mem}, Python {platform.python_version()}, ClickHouse {version} (chdb embedded), {system}"


def run_id(i: int) -> str:
    return f"bench-{i:06d}"


def points_chunk(first: int, count: int, metrics: int, steps: int, rng: np.random.Generator) -> pa.Table:
    """`count` runs from run `first`, every metric, steps 0..steps-1: a decaying curve plus noise."""
    n = count * metrics * steps
    run_idx = np.repeat(np.arange(count, dtype=np.int32), metrics * steps)
    metric_idx = np.tile(np.repeat(np.arange(metrics, dtype=np.int32), steps), count)
    step = np.tile(np.arange(steps, dtype=np.int64), count * metrics)
    scale = rng.uniform(0.5, 2.0, count * metrics).repeat(steps)
    value = scale * np.exp(-step / (steps / 4)) + rng.normal(0, 0.05, n)
    return pa.table(
        {
            "project": pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array([PROJECT])),
            "run_id": pa.DictionaryArray.from_arrays(run_idx, pa.array([run_id(first + i) for i in range(count)])),
            "metric": pa.DictionaryArray.from_arrays(metric_idx, pa.array([f"m{k}" if k else "loss" for k in range(metrics)])),
            "step": step,
            "value": value,
            "value_str": pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array([""])),
            "ts": pa.array(TS0_MS + step * 1000, pa.timestamp("ms")),
            "kafka_topic": pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array(["bench"])),
            "kafka_partition": np.zeros(n, dtype=np.uint16),
            "kafka_offset": np.arange(n, dtype=np.uint64),
        }
    )


def generate(store: Store, runs: int, metrics: int, steps: int, chunk_rows: int) -> float:
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    rows = []
    for i in range(runs):
        tags = {"lr": ["0.1", "0.01", "0.001", "0.0001"][i % 4], "opt": ["adam", "sgd"][i % 2]}
        rows.append([PROJECT, run_id(i), f"exp-{i // RUNS_PER_EXPERIMENT}", f"run {i}", "", "Completed", "", tags, {"seed": str(i)}, 1])
    rows.append([PROJECT, BIG_RUN, "exp-big", "big run", "", "Completed", "", {}, {}, 1])
    cols = ["project", "run_id", "experiment", "name", "parent_id", "status", "error", "tags", "params", "version"]
    for k in range(0, len(rows), 5000):
        store.insert_rows("runs", rows[k : k + 5000], cols)
    per_chunk = max(1, chunk_rows // (metrics * steps))
    total = 0
    for first in range(0, runs, per_chunk):
        count = min(per_chunk, runs - first)
        t0 = time.perf_counter()
        table = points_chunk(first, count, metrics, steps, rng)
        store.insert_arrow("metric_points", table)
        total += table.num_rows
        print(f"  {total:>12,} points  ({table.num_rows / (time.perf_counter() - t0) / 1e6:.1f} M points/s)", flush=True)
    step = np.arange(BIG_STEPS, dtype=np.int64)
    big = pa.table(
        {
            "project": [PROJECT] * BIG_STEPS,
            "run_id": [BIG_RUN] * BIG_STEPS,
            "metric": [BIG_METRIC] * BIG_STEPS,
            "step": step,
            "value": np.sin(step / 5000.0) + rng.normal(0, 0.1, BIG_STEPS),
            "value_str": [""] * BIG_STEPS,
            "ts": pa.array(TS0_MS + step, pa.timestamp("ms")),
            "kafka_topic": ["bench"] * BIG_STEPS,
            "kafka_partition": np.zeros(BIG_STEPS, dtype=np.uint16),
            "kafka_offset": np.arange(BIG_STEPS, dtype=np.uint64),
        }
    )
    store.insert_arrow("metric_points", big)
    return time.perf_counter() - started


def settle(store: Store, limit_s: float) -> float:
    """Wait (up to limit_s) for background merges, so they don't compete with the timings."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if not store.query_rows("SELECT count() FROM system.merges")[0][0]:
            break
        time.sleep(1)
    return time.perf_counter() - t0


def timed(fn: Any, reps: int) -> tuple[float, float, Any]:
    result = fn()  # warm-up (caches, first-use setup)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--metrics", type=int, default=10)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--data", type=Path, default=Path("/tmp/runstream-bench-query"))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--chunk-rows", type=int, default=4_000_000, help="points per insert")
    ap.add_argument("--regen", action="store_true", help="discard --data and generate again")
    args = ap.parse_args()

    shape = {"runs": args.runs, "metrics": args.metrics, "steps": args.steps, "big": BIG_STEPS}
    marker = args.data / "shape.json"
    if args.regen or not marker.exists() or json.loads(marker.read_text()) != shape:
        shutil.rmtree(args.data, ignore_errors=True)
    args.data.mkdir(parents=True, exist_ok=True)
    store = get_store(f"chdb://{args.data / 'clickhouse'}")
    print("machine:", machine(store))
    if not marker.exists():
        n = args.runs * args.metrics * args.steps
        print(f"generating {args.runs:,} runs x {args.metrics} metrics x {args.steps:,} steps = {n:,} points (+{BIG_STEPS:,}) in {args.data}")
        gen_s = generate(store, args.runs, args.metrics, args.steps, args.chunk_rows)
        print(f"generation: {gen_s:.1f} s ({(n + BIG_STEPS) / gen_s / 1e6:.2f} M points/s)")
        marker.write_text(json.dumps(shape))
        (args.data / "generation.txt").write_text(f"{gen_s:.1f} s\n")
    else:
        print(f"reusing data in {args.data} (generated in {(args.data / 'generation.txt').read_text().strip()}); --regen to rebuild")
    waited = settle(store, 120)
    parts = store.query_rows("SELECT table, count() FROM system.parts WHERE active AND database = currentDatabase() GROUP BY table ORDER BY table")
    print(f"merges settled after {waited:.1f} s; active parts: {dict(parts)}")
    print(f"points stored: {store.query_rows('SELECT count() FROM metric_points')[0][0]:,}")

    from fastapi.testclient import TestClient

    from runstream.api.app import create_app
    from runstream.config import Settings

    app = create_app(Settings().with_(home=args.data, clickhouse=store.dsn, api_key=None), store)
    client = TestClient(app)
    n_runs = args.runs
    compare_ids = ",".join(run_id(i) for i in range(0, n_runs, max(1, n_runs // 100)))
    metric_names = ",".join(f"m{k}" if k else "loss" for k in range(args.metrics))
    agg_experiment = "exp-0"
    agg_runs = min(RUNS_PER_EXPERIMENT, n_runs)

    def get(path: str, **params: Any) -> Any:
        r = client.get(path, params=params)
        r.raise_for_status()
        return r.json()

    cases = [
        (f"leaderboard over all {n_runs:,} runs", lambda: get("/api/v1/leaderboard", metric="loss", mode="min", limit=10)),
        (
            f"compare {len(compare_ids.split(','))} runs x {args.metrics} metrics",
            lambda: get("/api/v1/compare", runs=compare_ids, metrics=metric_names),
        ),
        (f"series {BIG_STEPS:,} -> 1,000 points (LTTB)", lambda: get(f"/api/v1/runs/{BIG_RUN}/metrics/{BIG_METRIC}", max_points=1000)),
        (
            f"grouped mean+-std over {agg_runs:,} runs",
            lambda: get("/api/v1/aggregate", experiment=agg_experiment, metric="loss", group_by="tag.lr", max_points=1000),
        ),
    ]
    # The machine may be shared: the load average says how much the figures are disturbed.
    print(f"\nload average before timing: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'query':<44} {'p50 ms':>9} {'max ms':>9}  bar ({BAR_MS:.0f} ms)")
    for name, fn in cases:
        p50, worst, result = timed(fn, args.reps)
        check = ""
        if "groups" in result:
            check = f"  [{len(result['groups'])} groups, {len(result['groups'][0]['steps'])} steps]"
        elif "values" in result:
            check = f"  [{len(result['values'])} points]"
        elif "runs" in result:
            check = f"  [{len(result['runs'])} runs]"
        print(f"{name:<44} {p50:>9.1f} {worst:>9.1f}  {'met' if p50 < BAR_MS else 'MISSED'}{check}", flush=True)
    print(f"load average after timing: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    client.close()


if __name__ == "__main__":
    main()
