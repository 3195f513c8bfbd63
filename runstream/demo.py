"""Synthetic training runs through the real client.

`run_demo`: a fixed set of runs that end (`runstream demo`). `DemoSweep`: a small sweep
that keeps going until stopped (`runstream up --demo`), so that someone who opens the
dashboard minutes later still sees it move: a long run, and one generation of trials
after another under a parent run, some finishing, one in a few failing.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time

from runstream import Experiment, Run
from runstream.config import Settings

log = logging.getLogger("runstream.demo")


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


class DemoSweep:
    """Keeps a small sweep going until `stop` is set, at a load that leaves the machine
    responsive (about 60 points/s with the defaults).

    A long run (`long-run`) logs a step every `long_pace` seconds for as long as the demo
    runs. Meanwhile generation after generation of `trials` child runs, each under a
    parent run `sweep-NNN` (the shape of a hyperparameter sweep), trains `steps` steps
    `pace` seconds apart; the trial whose number is 3 modulo 7 diverges and fails; the
    parent logs the best trial's loss and completes; the next generation starts
    `rest` seconds later. Stopping ends every open run Canceled."""

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event,
        trials: int = 4,
        steps: int = 120,
        pace: float = 0.25,
        long_pace: float = 0.5,
        rest: float = 3.0,
        experiment: str = "demo-sweep",
    ) -> None:
        self.exp = Experiment(experiment, settings=settings)
        self.stop = stop
        self.trials = trials
        self.steps = steps
        self.pace = pace
        self.long_pace = long_pace
        self.rest = rest
        self.generations = 0  # sweeps finished

    def run(self) -> None:
        long_run = threading.Thread(target=self._long_run, name="demo-long-run", daemon=True)
        long_run.start()
        trial = 0
        try:
            while not self.stop.is_set():
                self._generation(self.generations, trial)
                trial += self.trials
                if self.stop.is_set():
                    break
                self.generations += 1
                self.stop.wait(self.rest)
        except Exception as exc:  # the demo must never take the server down with it
            log.warning("demo sweep stopped: %r", exc)
        long_run.join()

    def _long_run(self) -> None:
        rng = random.Random(7)
        with self.exp.start_logging(name="long-run", tags={"model": "transformer"}, params={"lr": 3e-4}, capture_output=False) as run:
            step = 0
            loss = 4.0
            while not self.stop.wait(self.long_pace):
                loss = max(0.05, loss * 0.999 + rng.gauss(0, 0.01))
                run.log_metrics({"loss": loss, "perplexity": math.exp(min(loss, 20.0)), "tokens_per_s": 9000 + rng.gauss(0, 300)}, step=step)
                if step % 20 == 0:
                    run.log_text("stdout", f"step {step}: loss={loss:.4f}")
                step += 1
            run.cancel()

    def _generation(self, generation: int, first_trial: int) -> None:
        parent = self.exp.start_logging(name=f"sweep-{generation:03d}", tags={"kind": "sweep"}, capture_output=False)
        results: dict[str, float] = {}
        children = []
        for i in range(self.trials):
            trial = first_trial + i
            alpha = round(0.05 + 0.9 * ((trial * 0.618) % 1.0), 3)
            child = parent.child_run(name=f"trial-{trial:04d}", params={"alpha": alpha, "lr": [1e-3, 3e-3, 1e-2][trial % 3]})
            children.append(threading.Thread(target=self._trial, args=(child, trial, alpha, results), daemon=True))
        for t in children:
            t.start()
        for t in children:
            t.join()
        if self.stop.is_set():
            parent.cancel()
            return
        if results:
            best = min(results, key=results.__getitem__)
            parent.log("best_loss", results[best])
            parent.tag("best_trial", best)
        parent.complete()

    def _trial(self, run: Run, trial: int, alpha: float, results: dict[str, float]) -> None:
        rng = random.Random(trial)
        diverges = trial % 7 == 3
        loss = 2.0 + alpha
        for step in range(self.steps):
            if self.stop.wait(self.pace):
                run.cancel()
                return
            if diverges and step == self.steps // 2:
                run.log("loss", float("nan"), step=step)
                run.log_text("stderr", f"step {step}: loss is NaN, stopping")
                run.fail("loss diverged (NaN)")
                return
            loss = abs(loss * (1 - 0.04 * (1 - alpha)) + rng.gauss(0, 0.01)) + 0.002 * alpha
            run.log_metrics({"loss": loss, "accuracy": 1 - loss / (3 + alpha)}, step=step)
            if step % 30 == 0:
                run.log_text("stdout", f"step {step}: loss={loss:.4f}")
        results[run.name] = loss
        run.complete()
