"""Synthetic training runs through the real client (`runstream demo`, `up --demo`)."""

from __future__ import annotations

import math
import random
import threading
import time

from runstream import Experiment
from runstream.config import Settings


def train(exp: Experiment, index: int, steps: int, pace: float, stop: threading.Event | None = None) -> str:
    rng = random.Random(index)
    lr = [1e-4, 3e-4, 1e-3, 3e-3][index % 4]
    seed = index // 4
    # The demo shares its process with the server: its stdout is the server's, not a run's.
    with exp.start_logging(
        name=f"demo-{index:03d}", tags={"model": "mlp", "seed": seed}, params={"lr": lr, "batch_size": 64}, capture_output=False
    ) as run:
        run.log_list("Fibonacci", [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89])
        for i in range(-10, 10):
            run.log("Sigmoid", 1 / (1 + math.exp(-i)))
        run.log_table("Sine Wave", {"angle": [a / 10 for a in range(63)], "sine": [math.sin(a / 10) for a in range(63)]})
        loss = 2.5 + rng.random()
        for step in range(steps):
            if stop is not None and stop.is_set():
                run.cancel()
                return run.id
            loss = abs(loss * (1 - lr * 3) + rng.gauss(0, 0.02))
            acc = 1 - math.exp(-step * lr * 5) * 0.9 + rng.gauss(0, 0.01)
            run.log_metrics({"loss": loss, "accuracy": acc, "lr": lr}, step=step)
            if step % 50 == 0:
                run.log_row("Cosine Wave", angle=step / 10, cos=math.cos(step / 10))
                run.log_text("stdout", f"step {step}: loss={loss:.4f} accuracy={acc:.4f}")
            if pace:
                time.sleep(pace)
        run.tag("final_loss", f"{loss:.4f}")
        return run.id


def run_demo(settings: Settings, runs: int = 6, steps: int = 500, pace: float = 0.02, stop: threading.Event | None = None) -> list[str]:
    exp = Experiment("demo", settings=settings)
    ids: list[str] = []
    threads = [threading.Thread(target=lambda i=i: ids.append(train(exp, i, steps, pace, stop)), daemon=True) for i in range(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ids
