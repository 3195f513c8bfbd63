"""Live latency: from run.log() in a training process to the WebSocket message in a subscriber.

    .venv/bin/python bench/live.py [--runs 100] [--subscribers 50] [--seconds 20] [--rate 20] [--warmup 5]

The main process hosts the pipeline (processor + api, as `runstream up`); one
child process runs the training loops, another the WebSocket subscribers, so
the three do not share a GIL. Each logged `lat` value is the wall-clock time of
its log() call; a subscriber's latency for a point is its receive time minus
that value. Half the subscribers watch the whole experiment (the runs list),
half watch 4 runs each (run pages). Prints p50/p90/p99/max and the machine.

The figures are for a pipeline that has been running, not one just started: the
bench starts its own Kafka broker, and a fresh JVM compiles the broker's hot code
for about a minute under this load (its C2 compiler thread measured at 24-29% of
a core for the first ~50 s, 6% at 66 s, ~1% after), on a 2-core machine that the
three processes already keep busy. Hence a 60 s warm-up at the same load before
the measured seconds (`--warmup 5` shows the first minute; with `--kafka` on a
broker that has run for a while, a short warm-up is enough).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import re
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def trainers(settings_dict: dict, runs: int, seconds: float, rate: float, ids_q: mp.Queue, start_evt, done_evt) -> None:  # type: ignore[no-untyped-def]
    from runstream import Experiment
    from runstream.config import Settings

    settings = Settings().with_(**settings_dict)
    exp = Experiment("bench-live", settings=settings)
    handles = [exp.start_logging(name=f"live-{i}") for i in range(runs)]
    for run in handles:
        run.flush()
    ids_q.put([r.id for r in handles])
    start_evt.wait()
    period = 1.0 / rate
    end = time.time() + seconds
    step = 0
    next_tick = time.time()
    while time.time() < end:
        for run in handles:
            run.log_metrics({f"m{j}": step * 0.1 + j for j in range(9)}, step=step)
            run.log("lat", time.time(), step=step)
        step += 1
        next_tick += period
        delay = next_tick - time.time()
        if delay > 0:
            time.sleep(delay)
    for run in handles:
        run.complete()
    done_evt.set()


LAT_VALUES = re.compile(rb'"lat":\{"s":\[[^\]]*\],"v":\[([^\]]*)\]')


def subscribers(url: str, ids: list[str], n: int, seconds: float, out_q: mp.Queue, ready_q: mp.Queue) -> None:  # type: ignore[no-untyped-def]
    import orjson
    import websockets

    # Two flat arrays, not a list of (sent, latency) tuples: a full collection of this
    # process with half a million such tuples took ~11 ms (1 ms with the arrays), a pause
    # that would delay its receives and count as latency.
    sent_at, latency = array("d"), array("d")
    messages = [0]
    sizes: list[int] = []

    async def one(i: int) -> None:
        async with websockets.connect(url, max_size=None) as ws:
            if i % 2 == 0:
                await ws.send(json.dumps({"subscribe": {"experiment": "bench-live"}}))
            else:
                for k in range(4):
                    await ws.send(json.dumps({"subscribe": {"run": ids[(i * 4 + k) % len(ids)]}}))
            ready_q.put(i)
            deadline = time.time() + seconds + 15
            while time.time() < deadline:
                try:
                    raw = await asyncio.wait_for(ws.recv(decode=False), timeout=max(0.1, deadline - time.time()))
                except TimeoutError:
                    break
                now = time.time()
                messages[0] += 1
                sizes.append(len(raw))
                # 50 browsers in one Python process: parsing every frame would make this
                # harness, not the api, the bottleneck. Pick the "lat" values out of the
                # text (orjson writes a slot's "s" before its "v"); parse in full only if
                # a frame has "lat" in another shape.
                found = LAT_VALUES.findall(raw)
                if not found and b'"lat"' in raw:
                    frame = orjson.loads(raw)
                    for msg in frame["updates"] if frame.get("type") == "updates" else [frame]:
                        slot = msg.get("metrics", {}).get("lat")
                        if slot:
                            for v in slot["v"]:
                                if v is not None:
                                    sent_at.append(v)
                                    latency.append(now - v)
                    continue
                for values in found:
                    for v in map(float, (x for x in values.split(b",") if x and x != b"null")):
                        sent_at.append(v)
                        latency.append(now - v)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(main())
    out_q.put((list(zip(sent_at, latency)), messages[0], sum(sizes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds of logging")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of the same load before measuring (the broker's JIT, caches, merges)")
    parser.add_argument("--rate", type=float, default=20.0, help="steps per second per run (10 points per step)")
    parser.add_argument("--kafka")
    args = parser.parse_args()

    from bench.common import Pipeline, machine
    from runstream.storage.store import get_store

    pipe = Pipeline(args.kafka)
    store = get_store(f"chdb://{pipe.home / 'clickhouse'}")
    proc, app, server, port = pipe.start_api(store)
    print(f"machine: {machine()}")
    ctx = mp.get_context("spawn")
    ids_q, out_q, ready_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    start_evt, done_evt = ctx.Event(), ctx.Event()
    s = pipe.settings
    settings_dict = {"home": s.home, "kafka": s.kafka, "topic_prefix": s.topic_prefix, "partitions": s.partitions, "api": f"http://127.0.0.1:{port}"}
    t = ctx.Process(target=trainers, args=(settings_dict, args.runs, args.warmup + args.seconds, args.rate, ids_q, start_evt, done_evt))
    t.start()
    ids = ids_q.get(timeout=120)
    sp = ctx.Process(target=subscribers, args=(f"ws://127.0.0.1:{port}/ws", ids, args.subscribers, args.warmup + args.seconds, out_q, ready_q))
    sp.start()
    for _ in range(args.subscribers):
        ready_q.get(timeout=60)
    time.sleep(1.0)  # let snapshots go out before the clock starts
    start_evt.set()
    measure_from = time.time() + args.warmup
    latencies, messages, received = out_q.get(timeout=args.warmup + args.seconds + 120)
    warm = len(latencies)
    latencies = [(t, lat) for t, lat in latencies if t >= measure_from]
    print(f"warm-up: {warm - len(latencies):,} samples of the first {args.warmup:g} s left out")
    t.join(60)
    sp.join(60)
    hub = app.state.hub.stats
    pstats = proc.stats
    server.should_exit = True
    pipe.close()
    first = min(t for t, _ in latencies) if latencies else 0.0
    per_second: dict[int, list[float]] = {}
    for t, lat in latencies:
        per_second.setdefault(int(t - first), []).append(lat)
    timeline = " ".join(f"{sec}s:{sorted(v)[int(0.99 * len(v))] * 1000:.0f}" for sec, v in sorted(per_second.items()))
    latencies = sorted(lat for _, lat in latencies)
    n = len(latencies)
    if not n:
        print("no latency samples received")
        return

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] * 1000

    points = args.runs * args.rate * args.seconds * 10
    print(
        f"workload: {args.runs} runs x {args.rate:g} steps/s x 10 metrics for {args.seconds:g} s (~{points / args.seconds:,.0f} points/s); "
        f"{args.subscribers} subscribers (half on the experiment, half on 4 runs each)"
    )
    print(
        f"latency log() -> WebSocket over {n:,} samples: p50 {pct(0.5):.0f} ms, p90 {pct(0.9):.0f} ms, "
        f"p99 {pct(0.99):.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )
    print(f"messages received: {messages:,} ({received / 1e6:,.0f} MB); hub: {hub}")
    print(f"p99 per second of logging (ms): {timeline}")
    spent = ", ".join(f"{k} {v:.2f} s" for k, v in pstats.seconds.items())
    print(
        f"processor: {pstats.batches} batches, {pstats.events_written:,} events, {pstats.live_messages:,} live run updates in "
        f"{pstats.live_bytes / 1e6:,.1f} MB; time in {spent}"
    )


if __name__ == "__main__":
    main()
