"""Dashboard speed in Chromium: how long the pages take to show their data, and frame times
while runs stream live.

    .venv/bin/python bench/dashboard.py [--runs 1000] [--long-points 100000] [--compare 100] [--live-runs 100] [--live-seconds 15]

The main process hosts the pipeline (its own Kafka broker, a processor and the api on the
embedded engine, as `runstream up`) and drives Debian's Chromium through Playwright
(executable_path, no browser download). Measured, from navigation start to the condition
seen in an animation frame (so within a frame, ~17 ms):
- runs list of `--runs` runs on one page (5 metric columns of last/min/max, 3 param columns):
  first rows, then every row;
- run page of one run with 20 metrics of `--long-points` points each, in a viewport tall enough
  that every chart is on screen (charts below the fold load lazily): first chart drawn, all 20;
- compare of `--compare` runs with 5 metrics: first chart with every run's series, all 5;
- frame times (requestAnimationFrame intervals) for `--live-seconds` on the runs list and on
  the compare page while `--live-runs` runs log 10 metrics at `--live-rate` steps/s in a
  separate process (bench/live.py's trainers).
Each page load is repeated `--repeat` times; the figures are the median and the worst.
Prints the machine.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"]
METRICS = ["mse", "loss", "acc", "f1", "lr"]
PARAMS = ["alpha", "bs", "depth"]


def _wait(page: Any, cond: str, timeout: float) -> float:
    """ms from navigation start to the first animation frame in which `cond` holds."""
    page.wait_for_function(
        f"() => {{ if ({cond}) {{ window.__t = performance.now(); return true; }} return false; }}", polling="raf", timeout=timeout
    )
    return float(page.evaluate("window.__t"))


def _load(store: Any, sql: str, params: dict[str, Any], want: int, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(store.query_rows(sql, params)[0][0]) >= want:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not stored after {timeout} s")


def seed(settings: Any, store: Any, runs: int, long_points: int) -> tuple[str, list[str], str]:
    """`runs` runs of 50 steps x 5 metrics and 3 params; one run of 20 metrics x long_points."""
    from runstream import Experiment

    t0 = time.perf_counter()
    exp = Experiment("bench-list", settings=settings)
    ids = []
    handles = []
    for i in range(runs):
        alpha = round((i % 40) * 0.025, 3)
        r = exp.start_logging(
            name=f"sweep-{i}",
            tags={"model": "ridge" if i % 2 else "lasso", "seed": str(i % 5)},
            params={"alpha": alpha, "bs": 32 * (1 + i % 4), "depth": 2 + i % 6},
        )
        for step in range(50):
            r.log_metrics(
                {
                    "mse": 3000 + 4000 * (alpha - 0.6) ** 2 + 500 * math.exp(-step / 10),
                    "loss": 1 / (step + 1),
                    "acc": 1 - 1 / (step + 2),
                    "f1": 0.5 + 0.01 * (i % 30),
                    "lr": 0.1 * 0.97**step,
                },
                step=step,
            )
        r.complete()
        ids.append(r.id)
        handles.append(r)
    long = Experiment("bench-long", settings=settings).start_logging(name="long")
    names = [f"series/{j:02d}" for j in range(20)]
    for step in range(long_points):
        long.log_metrics({n: math.sin(step / (500 + 37 * j)) + 0.001 * step for j, n in enumerate(names)}, step=step)
    long.complete()
    for r in [*handles, long]:
        r.flush(600)
    _load(store, "SELECT count() FROM runs FINAL WHERE experiment = 'bench-list' AND status = 'Completed'", {}, runs, "the runs")
    _load(store, "SELECT sum(count_state) FROM metric_summaries WHERE run_id = {r:String}", {"r": long.id}, 20 * long_points, "the long run")
    _load(store, "SELECT count() FROM metric_summaries WHERE run_id IN {ids:Array(String)}", {"ids": ids}, len(ids) * len(METRICS), "summaries")
    print(f"seeded {runs} runs x 50 steps x 5 metrics and 1 run x 20 x {long_points:,} points in {time.perf_counter() - t0:.0f} s")
    return "bench-list", ids, long.id


def frame_stats(frames: list[float]) -> str:
    frames = sorted(frames)
    n = len(frames)
    if not n:
        return "no frames"

    def pct(p: float) -> float:
        return frames[min(n - 1, int(p * n))]

    long = sum(1 for f in frames if f > 50)
    return f"{n} frames, p50 {pct(0.5):.1f} ms, p95 {pct(0.95):.1f} ms, p99 {pct(0.99):.1f} ms, max {frames[-1]:.0f} ms, {long} over 50 ms"


def measure_frames(page: Any, seconds: float) -> tuple[list[float], list[float]]:
    """rAF intervals, and the page's long tasks (main thread busy > 50 ms): frames late without long
    tasks are the renderer waiting for a CPU, not the page's JavaScript."""
    page.evaluate(
        """() => { window.__frames = []; window.__long = []; let last = performance.now(); window.__stop = false;
        new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long.push(e.duration); }).observe({ type: "longtask" });
        const f = (t) => { window.__frames.push(t - last); last = t; if (!window.__stop) requestAnimationFrame(f); }; requestAnimationFrame(f); }"""
    )
    time.sleep(seconds)
    frames, long = page.evaluate("() => { window.__stop = true; return [window.__frames.slice(1), window.__long]; }")
    return list(frames), list(long)


def long_stats(long: list[float], seconds: float) -> str:
    return f"long tasks: {len(long)}, {sum(long) / 1000 / seconds * 100:.0f}% of the time busy in them, longest {max(long, default=0):.0f} ms"


def api_times(base: str, experiment: str, ids: list[str], long_id: str) -> None:
    """The server's share: the requests the three pages make, timed from here (median of 5)."""
    import httpx

    cols = ",".join(METRICS)
    with httpx.Client(base_url=base, timeout=120) as c:

        def t(path: str, params: dict[str, Any]) -> float:
            out = []
            for _ in range(5):
                t0 = time.perf_counter()
                c.get(path, params=params).raise_for_status()
                out.append((time.perf_counter() - t0) * 1000)
            return statistics.median(out)

        print("api (ms, median of 5):")
        rows = [
            ("GET /runs limit=1000 metrics=5", "/api/v1/runs", {"experiment": experiment, "limit": 1000, "metrics": cols}),
            ("GET /runs/<long>/metrics/<one of 20> max_points=800", f"/api/v1/runs/{long_id}/metrics/series/00", {"max_points": 800}),
            ("GET /runs/<run>/metrics/mse max_points=400 (compare)", f"/api/v1/runs/{ids[0]}/metrics/mse", {"max_points": 400}),
            ("GET /compare 100 runs x 5 metrics", "/api/v1/compare", {"runs": ",".join(ids[:100]), "metrics": cols}),
        ]
        for label, path, params in rows:
            print(f"  {label:<55} {t(path, params):7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--long-points", type=int, default=100_000)
    parser.add_argument("--compare", type=int, default=100)
    parser.add_argument("--live-runs", type=int, default=100)
    parser.add_argument("--live-rate", type=float, default=5.0, help="steps per second per live run (10 points per step)")
    parser.add_argument("--live-seconds", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kafka")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from bench.common import Pipeline, machine
    from bench.live import trainers
    from runstream.storage.store import get_store

    print(f"machine: {machine()}")
    pipe = Pipeline(args.kafka)
    store = get_store(f"chdb://{pipe.home / 'clickhouse'}")
    _, _, server, port = pipe.start_api(store)
    base = f"http://127.0.0.1:{port}"
    trainer = None
    try:
        experiment, ids, long_id = seed(pipe.settings.with_(api=base), store, args.runs, args.long_points)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            results: dict[str, list[float]] = {}

            def page_load(key: str, url: str, first: str, done: str, viewport: dict[str, int]) -> None:
                for _ in range(args.repeat):
                    ctx = browser.new_context(viewport=viewport)
                    page = ctx.new_page()
                    page.goto(url, wait_until="commit")
                    results.setdefault(f"{key}: first", []).append(_wait(page, first, 120_000))
                    results.setdefault(f"{key}: all", []).append(_wait(page, done, 180_000))
                    ctx.close()

            cols = ",".join(METRICS)
            page_load(
                f"runs list, {args.runs} runs, 5 metric + 3 param columns",
                f"{base}/#/?experiment={experiment}&metrics={cols}&params={','.join(PARAMS)}&limit=1000",
                "document.querySelector('table.runs tbody tr[data-run]')",
                f"document.querySelectorAll('table.runs tbody tr[data-run]').length === {min(args.runs, 1000)}",
                {"width": 1600, "height": 1000},
            )
            page_load(
                f"run page, 20 charts x {args.long_points:,} points",
                f"{base}/#/runs/{long_id}",
                "[...document.querySelectorAll('.chart[data-metric]')].some(c => Number(c.dataset.points) > 0)",
                "(() => { const cs = [...document.querySelectorAll('.chart[data-metric]')]; "
                "return cs.length === 20 && cs.every(c => Number(c.dataset.points) > 0); })()",
                {"width": 1600, "height": 6000},
            )
            cmp = ids[: args.compare]
            want = len(cmp) + 1
            chart_ready = (
                f"(c => c && c._plot && c._plot.series.length === {want} "
                f"&& /^{len(cmp)} of/.test(c.closest('.chart-card').querySelector('.sub').textContent))"
            )
            page_load(
                f"compare, {len(cmp)} runs x 5 metrics",
                f"{base}/#/compare?runs={','.join(cmp)}&metrics={cols}",
                f"[...document.querySelectorAll('.compare-page .chart[data-metric]:not(.agg)')].some({chart_ready})",
                "(() => { const cs = [...document.querySelectorAll('.compare-page .chart[data-metric]:not(.agg)')]; "
                f"return cs.length === 5 && cs.every({chart_ready}); }})()",
                {"width": 1600, "height": 3000},
            )
            print("page loads (ms from navigation start; median / worst of", args.repeat, "):")
            for k, v in results.items():
                print(f"  {k:<55} {statistics.median(v):7.0f} / {max(v):7.0f}")
            api_times(base, experiment, ids, long_id)
            # the machine's own noise: frames of a still page (the 1000-run list, nothing live)
            ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = ctx.new_page()
            page.goto(f"{base}/#/?experiment={experiment}&metrics={cols}&params={','.join(PARAMS)}&limit=1000")
            page.wait_for_function(f"document.querySelectorAll('table.runs tbody tr[data-run]').length === {min(args.runs, 1000)}", timeout=120_000)
            frames, long = measure_frames(page, 5)
            print(f"  still page (baseline), 5 s: {frame_stats(frames)}; {long_stats(long, 5)}")
            ctx.close()
            print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

            # frame times while runs stream live
            ctx_mp = mp.get_context("spawn")
            ids_q: Any = ctx_mp.Queue()
            start_evt, done_evt = ctx_mp.Event(), ctx_mp.Event()
            s = pipe.settings
            settings_dict = {"home": s.home, "kafka": s.kafka, "topic_prefix": s.topic_prefix, "partitions": s.partitions, "api": base}
            total = 2 * args.live_seconds + 150  # the two measurements and the page loads between them, on a loaded machine
            trainer = ctx_mp.Process(target=trainers, args=(settings_dict, args.live_runs, total, args.live_rate, ids_q, start_evt, done_evt))
            trainer.start()
            live_ids = ids_q.get(timeout=120)
            start_evt.set()
            pts = args.live_runs * args.live_rate * 10
            print(f"live: {args.live_runs} runs x {args.live_rate:g} steps/s x 10 metrics (~{pts:,.0f} points/s)")
            ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = ctx.new_page()
            page.goto(f"{base}/#/?experiment=bench-live&metrics=m0,m1,m2,m3,m4&limit=100")
            page.wait_for_function(f"document.querySelectorAll('table.runs tbody tr[data-run]').length === {args.live_runs}", timeout=120_000)
            page.wait_for_function("document.querySelector('#live').dataset.state === 'open'")
            time.sleep(3)
            frames, long = measure_frames(page, args.live_seconds)
            print(f"  runs list, {args.live_runs} live runs: {frame_stats(frames)}; {long_stats(long, args.live_seconds)}")
            page.goto(f"{base}/#/compare?runs={','.join(live_ids)}&metrics=m0,m1")
            page.wait_for_function("document.querySelectorAll('.compare-page .chart[data-metric]:not(.agg)').length === 2", timeout=120_000)
            time.sleep(5)
            before = page.evaluate("document.querySelector('.compare-page .chart[data-metric=\"m0\"]')._plot.data[0].length")
            frames, long = measure_frames(page, args.live_seconds)
            after = page.evaluate("document.querySelector('.compare-page .chart[data-metric=\"m0\"]')._plot.data[0].length")
            print(f"  compare, {args.live_runs} live runs x 2 charts: {frame_stats(frames)}; {long_stats(long, args.live_seconds)}")
            print(f"    (the m0 chart grew from {before} to {after} steps while measured)")
            ctx.close()
            browser.close()
            trainer.join(total + 60)  # its runs complete
    finally:
        if trainer is not None and trainer.is_alive():
            trainer.terminate()
            trainer.join(30)
        server.should_exit = True
        pipe.close()


if __name__ == "__main__":
    main()
