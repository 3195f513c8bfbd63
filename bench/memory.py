"""Memory over time: the client's stays bounded, the processor's stays flat.

    .venv/bin/python bench/memory.py [--client-seconds 20] [--processor-seconds 60] [--rate 100000]

Client: a training loop calling log_metrics (10 values) as fast as it can, first with
the broker up (Kafka keeps pace or the in-memory bound of the shipper applies), then
with the broker unreachable (the shipper spills to its disk spool). The RSS of this
process is sampled every second. Processor: one `runstream processor` process under a
steady load of --rate points/s from 100 runs; its RSS is sampled every 2 seconds.
"""

from __future__ import annotations

import argparse
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
from runstream.config import Settings  # noqa: E402
from runstream.kafka_broker import LocalBroker  # noqa: E402


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def client_phase(settings: Settings, seconds: float, label: str) -> None:
    exp = Experiment("bench-memory", settings=settings)
    run = exp.start_logging(name=label, capture_output=False)
    shipper = run._shipper
    dropped0 = shipper.dropped_points
    values = {f"m{j}": 0.1 * j for j in range(10)}
    samples: list[float] = []
    step = 0
    start = time.monotonic()
    next_sample = start
    while (now := time.monotonic()) - start < seconds:
        for _ in range(1000):
            run.log_metrics(values, step=step)
            step += 1
        if now >= next_sample:
            samples.append(rss_mib())
            next_sample += 1.0
    logged = step * 10
    dropped = shipper.dropped_points - dropped0
    spool = settings.home / "spool"
    spooled = sum(f.stat().st_size for f in spool.rglob("*") if f.is_file()) if spool.exists() else 0
    print(f"client, {label}: {logged:,} points logged in {seconds:g} s; RSS MiB per second: {' '.join(f'{x:.0f}' for x in samples)}")
    print(
        f"  max RSS {max(samples):.0f} MiB, last {samples[-1]:.0f} MiB; points dropped at the memory bound: {dropped:,}; "
        f"spool on disk: {spooled / 1e6:,.0f} MB; buffered now: {shipper.buffered_points if hasattr(shipper, 'buffered_points') else 'n/a'}"
    )
    run.complete() if label == "broker up" else None


def processor_phase(kafka: str, home: Path, seconds: float, rate: float) -> None:
    prefix = f"mem{uuid.uuid4().hex[:8]}"
    settings = Settings().with_(home=home, kafka=kafka, topic_prefix=prefix, api_key=None)
    proc = ProcessorProcess(settings, home / f"{prefix}-engine", name=f"{prefix}-processor")
    stop = threading.Event()

    def train() -> None:
        exp = Experiment("bench-memory-processor", settings=settings)
        runs = [exp.start_logging(name=f"m{i}", capture_output=False) for i in range(100)]
        step = 0
        period = 100 * 10 / rate  # one step of every run per period
        next_tick = time.monotonic()
        while not stop.is_set():
            for run in runs:
                run.log_metrics({f"m{j}": step * 0.01 + j for j in range(10)}, step=step)
            step += 1
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))
        for run in runs:
            run.complete()

    trainer = threading.Thread(target=train)
    samples: list[tuple[float, float, int]] = []
    try:
        trainer.start()
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            samples.append((time.monotonic() - start, rss_mib(proc.proc.pid), proc.points_written()))
            time.sleep(2.0)
    finally:
        stop.set()
        trainer.join(60)
        proc.stop()
    third = max(1, len(samples) // 3)
    first = sum(r for _, r, _ in samples[:third]) / third
    last = sum(r for _, r, _ in samples[-third:]) / third
    print(f"processor under ~{rate:,.0f} points/s for {seconds:g} s, RSS MiB every 2 s: {' '.join(f'{r:.0f}' for _, r, _ in samples)}")
    print(
        f"  points written: {samples[-1][2]:,}; RSS first third avg {first:.0f} MiB, last third avg {last:.0f} MiB "
        f"({(last - first) / first * 100:+.1f}%), max {max(r for _, r, _ in samples):.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--client-seconds", type=float, default=20.0)
    parser.add_argument("--processor-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=100_000, help="points/s the processor phase logs")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="runstream-bench-"))
    kafka = f"127.0.0.1:{free_port()}"
    broker = LocalBroker(home, kafka)
    broker.start()
    try:
        print(f"machine: {machine()}")
        print(f"client RSS before logging: {rss_mib():.0f} MiB")
        up = Settings().with_(home=home / "client-up", kafka=kafka, topic_prefix=f"mem{uuid.uuid4().hex[:8]}", api_key=None)
        client_phase(up, args.client_seconds, "broker up")
        processor_phase(kafka, home, args.processor_seconds, args.rate)
    finally:
        broker.stop()
    # Last: the broker is gone for good, so this process's shipper spools from here on.
    down = Settings().with_(home=home / "client-down", kafka=f"127.0.0.1:{free_port()}", topic_prefix="memdown", api_key=None)
    client_phase(down, args.client_seconds, "broker unreachable")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
