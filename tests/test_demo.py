"""`runstream up --demo` keeps a sweep going: a long run, generations of trials under a
parent, some completing, one failing; stopping it ends every open run."""

from __future__ import annotations

import threading
import uuid

import pytest

from runstream.demo import DemoSweep
from runstream.storage.store import Store
from tests.conftest import Stack, wait_until

pytestmark = pytest.mark.one_engine  # the subject is the demo's shape, not storage


def _runs(store: Store, experiment: str) -> list[tuple[str, str, str]]:
    rows = store.query_rows("SELECT name, status, parent_id FROM runs FINAL WHERE experiment = {e:String}", {"e": experiment})
    return [(str(n), str(s), str(p)) for n, s, p in rows]


def test_the_demo_sweep_keeps_going_until_stopped(stack: Stack) -> None:
    experiment = f"demo-{uuid.uuid4().hex[:6]}"
    stop = threading.Event()
    sweep = DemoSweep(stack.settings, stop, trials=4, steps=16, pace=0.01, long_pace=0.05, rest=0.1, experiment=experiment)
    thread = threading.Thread(target=sweep.run, daemon=True)
    thread.start()
    try:

        def two_generations_done() -> bool:
            runs = _runs(stack.store, experiment)
            parents = [r for r in runs if r[0].startswith("sweep-") and r[1] == "Completed"]
            return len(parents) >= 2 and any(r[1] == "Failed" for r in runs) and ("long-run", "Running", "") in runs

        wait_until(two_generations_done, 60, what="two sweep generations done while the long run keeps running")
        runs = _runs(stack.store, experiment)
        parents = {name: status for name, status, parent in runs if not parent and name.startswith("sweep-")}
        trials = [(name, status, parent) for name, status, parent in runs if name.startswith("trial-")]
        assert trials and all(parent for _, _, parent in trials)  # every trial is a child run
        failed = [name for name, status, _ in trials if status == "Failed"]
        assert failed == ["trial-0003"] or "trial-0003" in failed  # the trial numbered 3 modulo 7 diverges
        assert any(status == "Completed" for _, status, _ in trials)
        assert "sweep-000" in parents and parents["sweep-000"] == "Completed"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    wait_until(
        lambda: all(status in ("Completed", "Failed", "Canceled") for _, status, _ in _runs(stack.store, experiment)),
        30,
        what="every demo run ended after the stop",
    )
    assert ("long-run", "Canceled", "") in _runs(stack.store, experiment)
