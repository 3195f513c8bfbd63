"""Memory over time: the client's stays bounded whatever the training loop logs; the processor's stays flat.

    .venv/bin/python bench/memory.py [--client-seconds 30] [--processor-seconds 60] [--rate 100000]
                                     [--phases consuming,stalled,down,processor]

Client: a training loop calling log_metrics (10 values) as fast as it can for
--client-seconds, each phase in a fresh process so one phase's heap does not carry
into the next; the RSS of that process is sampled every second, with the shipper's
counters (points buffered against its bound, points dropped, spooling).
- consuming: the broker up and a `runstream processor` consuming the topic.
- stalled: the broker frozen (SIGSTOP) for the whole phase, connections open but
  nothing acknowledged (a hung or overloaded broker); then resumed (SIGCONT), and
  the time until everything not dropped is delivered.
- down: nothing listening at the bootstrap address (the broker stopped).

Processor: one `runstream processor` process under a steady --rate points/s from 100
runs for --processor-seconds; its RSS is sampled every 2 seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ProcessorProcess, free_port, machine, rss_mib  # noqa: E402
from runstream.config import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def client_child(kafka: str, home: Path, prefix: str, seconds: float, freeze_pid: int | None, reachable: bool) -> dict[str, Any]:
    """The training process of one client phase: log as fast as possible, sample RSS each second."""
    from runstream import Experiment
    from runstream.ingest.shipper import get_shipper

    settings = Settings().with_(home=home, kafka=kafka, topic_prefix=prefix, api_key=None)
    rss_start = rss_mib()
    run = Experiment("bench-memory", settings=settings).start_logging(name="memory", capture_output=False)
    shipper = get_shipper(settings)
    if reachable:
        run.log("warm-up", 1.0)
        assert run.flush(60), "broker not reachable"  # producer connected, topic there
    values = {f"m{j}": 0.1 * j for j in range(10)}
    samples: list[dict[str, Any]] = []
    spooling_at: float | None = None
    step = 0
    if freeze_pid:
        os.kill(freeze_pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        next_sample = start
        while (now := time.monotonic()) - start < seconds:
            for _ in range(1000):
                run.log_metrics(values, step=step)
                step += 1
            if spooling_at is None and shipper.spooling:
                spooling_at = now - start
            if now >= next_sample:
                samples.append(
                    {
                        "t": round(now - start, 1),
                        "rss": round(rss_mib(), 1),
                        "logged": step * 10,
                        "buffered": shipper.buffered_points,
                        "dropped": shipper.dropped_points,
                        "spooling": shipper.spooling,
                    }
                )
                next_sample += 1.0
    finally:
        if freeze_pid:
            os.kill(freeze_pid, signal.SIGCONT)
    logged = step * 10
    result: dict[str, Any] = {
        "rss_start": rss_start,
        "samples": samples,
        "logged": logged,
        "dropped": shipper.dropped_points,
        "max_buffered_points": shipper.max_buffered_points,
        "spooling_at": spooling_at,
        "spooled_events": shipper.spooled_events,
        "spool_bytes": _dir_bytes(settings.spool_dir),
        "spool_max_bytes": shipper.max_spool_bytes,
    }
    if reachable:
        t = time.monotonic()
        result["delivered"] = run.flush(600)  # spooled events replayed, the rest acknowledged
        result["deliver_s"] = time.monotonic() - t
        result["replayed_events"] = shipper.replayed_events
        result["rss_after_delivery"] = rss_mib()
        run.complete()
    return result


def client_phase(label: str, kafka: str, home: Path, seconds: float, *, freeze_pid: int | None = None, reachable: bool = True) -> None:
    prefix = f"mem{uuid.uuid4().hex[:8]}"
    processor = None
    if label == "consuming":
        settings = Settings().with_(home=home / f"{prefix}-processor-home", kafka=kafka, topic_prefix=prefix, api_key=None)
        settings.home.mkdir(parents=True)
        processor = ProcessorProcess(settings, home / f"{prefix}-engine", group=f"g-{prefix}", name="processor")
    cmd = [sys.executable, __file__, "--client-child", "--kafka", kafka, "--home", str(home / f"{prefix}-client"), "--prefix", prefix]
    cmd += ["--client-seconds", str(seconds)] + (["--freeze-pid", str(freeze_pid)] if freeze_pid else []) + ([] if reachable else ["--unreachable"])
    # Unreachable: do not wait at exit for a broker that is not coming (what is left is spooled).
    env = {**os.environ, "RUNSTREAM_EXIT_FLUSH_TIMEOUT": "1", "RUNSTREAM_CAPTURE_OUTPUT": "0"}
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 900)
    finally:
        if freeze_pid:
            os.kill(freeze_pid, signal.SIGCONT)  # whatever happened to the child
        written = processor.points_written() if processor is not None else None
        if processor is not None:
            processor.stop()
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"client phase {label} failed ({out.returncode}): {out.stderr[-3000:]}")
    r = json.loads(lines[-1])
    samples = r["samples"]
    rss = [s["rss"] for s in samples]
    describe = {
        "consuming": "broker up, a processor consuming",
        "stalled": "broker frozen (SIGSTOP) all phase",
        "down": "nothing listening at the bootstrap address",
    }[label]
    print(f"client, {describe}: {r['logged']:,} points logged in {seconds:g} s ({r['logged'] / seconds:,.0f}/s)")
    print(f"  RSS MiB each second: {' '.join(f'{x:.0f}' for x in rss)}")
    buffered = " ".join(f"{s['buffered'] / 1e6:.2f}M" for s in samples)
    print(f"  buffered points each second (bound {r['max_buffered_points']:,}): {buffered}")
    half = rss[len(rss) // 2 :]
    print(
        f"  RSS before the run {r['rss_start']:.0f} MiB, max {max(rss):.0f} MiB, last {rss[-1]:.0f} MiB, "
        f"second half {min(half):.0f}-{max(half):.0f} MiB; dropped at the memory bound or a full spool: {r['dropped']:,} points "
        f"({r['dropped'] / max(1, r['logged']) * 100:.1f}%)"
    )
    if r["spooling_at"] is None:
        print("  never spooled")
    else:
        on_disk = f"{r['spool_bytes'] / 1e6:,.0f} MB on disk (bound {r['spool_max_bytes'] / 1e9:.1f} GB)"
        print(f"  spooling from {r['spooling_at']:.1f} s: {r['spooled_events']:,} events, {on_disk}")
    if "delivered" in r:
        print(
            f"  after the phase: everything not dropped delivered={r['delivered']} in {r['deliver_s']:.1f} s "
            f"({r['replayed_events']:,} spooled events replayed); RSS then {r['rss_after_delivery']:.0f} MiB"
        )
    if written is not None:
        print(f"  the processor stored {written:,} points meanwhile")
    sys.stdout.flush()


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def processor_phase(kafka: str, home: Path, seconds: float, rate: float) -> None:
    from runstream import Experiment
    from runstream.ingest.shipper import get_shipper

    prefix = f"mem{uuid.uuid4().hex[:8]}"
    settings = Settings().with_(home=home, kafka=kafka, topic_prefix=prefix, api_key=None)
    proc = ProcessorProcess(settings, home / f"{prefix}-engine", group=f"g-{prefix}", name=f"{prefix}-processor")
    stop = threading.Event()
    logged = [0]

    def train() -> None:
        exp = Experiment("bench-memory-processor", settings=settings)
        runs = [exp.start_logging(name=f"m{i}", capture_output=False) for i in range(100)]
        step = 0
        period = 100 * 10 / rate  # one step of every run per period
        start = time.monotonic()
        while not stop.is_set():
            for run in runs:
                run.log_metrics({f"m{j}": step * 0.01 + j for j in range(10)}, step=step)
            step += 1
            logged[0] = step * 1000
            stop.wait(max(0.0, start + step * period - time.monotonic()))
        for run in runs:
            run.complete()

    trainer = threading.Thread(target=train)
    samples: list[tuple[float, float, int]] = []
    try:
        trainer.start()
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            samples.append((elapsed, rss_mib(proc.pid), proc.points_written()))
            stop.wait(max(0.0, start + len(samples) * 2.0 - time.monotonic()))
        lag = proc.consumer_lag()
    finally:
        stop.set()
        trainer.join(60)
        get_shipper(settings).close()
        proc.stop()
    third = max(1, len(samples) // 3)
    first = sum(r for _, r, _ in samples[:third]) / third
    last = sum(r for _, r, _ in samples[-third:]) / third
    written = samples[-1][2]
    tail = samples[len(samples) // 2 :]
    slope = _slope([t for t, _, _ in tail], [r for _, r, _ in tail]) * 60
    series = " ".join(f"{r:.0f}" for _, r, _ in samples)
    print(f"processor under ~{rate:,.0f} points/s (100 runs x 10 metrics) for {seconds:g} s, RSS MiB every 2 s: {series}")
    print(
        f"  points written {written:,} of {logged[0]:,} logged ({written / samples[-1][0]:,.0f}/s), consumer lag at the end {lag:,} records; "
        f"RSS first third avg {first:.0f} MiB, last third avg {last:.0f} MiB ({(last - first) / first * 100:+.1f}%), "
        f"max {max(r for _, r, _ in samples):.0f} MiB; trend over the second half {slope:+.1f} MiB/min"
    )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client-seconds", type=float, default=30.0)
    parser.add_argument("--processor-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=100_000, help="points/s the processor phase logs")
    parser.add_argument("--phases", default="consuming,stalled,down,processor")
    # The child process of a client phase.
    parser.add_argument("--client-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kafka", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--freeze-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--unreachable", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_child:
        result = client_child(args.kafka, Path(args.home), args.prefix, args.client_seconds, args.freeze_pid, not args.unreachable)
        print(json.dumps(result), flush=True)
        return

    from runstream.kafka_broker import LocalBroker

    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    home = Path(tempfile.mkdtemp(prefix="runstream-bench-"))
    kafka = f"127.0.0.1:{free_port()}"
    broker = LocalBroker(home, kafka)
    broker.start()
    try:
        print(f"machine: {machine()}")
        print(f"broker: {kafka} (started here); RSS via {'psutil' if _has_psutil() else '/proc'}", flush=True)
        if "consuming" in phases:
            client_phase("consuming", kafka, home, args.client_seconds)
        if "stalled" in phases:
            pid = broker.pid()
            assert pid is not None, "no broker pid"
            client_phase("stalled", kafka, home, args.client_seconds, freeze_pid=pid)
        if "processor" in phases:
            processor_phase(kafka, home, args.processor_seconds, args.rate)
        if "down" in phases:
            client_phase("down", f"127.0.0.1:{free_port()}", home, args.client_seconds, reachable=False)
    finally:
        pid = broker.pid()
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        broker.stop()
        shutil.rmtree(home, ignore_errors=True)


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
