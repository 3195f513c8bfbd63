"""A status that changed before a subscriber arrived is in its snapshot.

The race behind the runs list that never showed Failed (issue 15): the processor sent a
batch's live update as soon as its data tables were stored, but the run rows (status,
end time) are written afterwards by the ledger lane. A page that subscribed between the
two missed the update (sent before it registered) and read the old status in its
snapshot (the row not written yet): nothing would ever correct it, since an ended run
sends nothing more. Reproduced here deterministically: the ledger lane held back by a
long ledger interval, the run fails, the test waits until the processor has published
that batch's update, then subscribes. Before the fix the snapshot said Running and no
update followed; now an update that changes a run row goes out after the ledger.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runstream import Experiment
from runstream.storage.store import Store
from tests.conftest import Stack, new_settings, wait_until
from tests.test_live import _hub_ready, _recv_until, _ws

LEDGER_INTERVAL = 4.0  # the ledger lane writes at most this often: a wide window between data and run rows


@pytest.fixture()
def slow_ledger_stack(home: Path, kafka_bootstrap: str, store: Store) -> Iterator[Stack]:
    s = Stack(new_settings(home, kafka_bootstrap, topic_prefix=f"race{uuid.uuid4().hex[:8]}"), store, ledger_interval=LEDGER_INTERVAL)
    s.settings = s.settings.with_(api=s.api_url, clickhouse=store.dsn)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _status(store: Store, run_id: str) -> str | None:
    rows = store.query_rows("SELECT status FROM runs FINAL WHERE run_id = {r:String}", {"r": run_id})
    return str(rows[0][0]) if rows else None


def test_a_status_published_before_the_subscription_is_in_the_snapshot(slow_ledger_stack: Stack) -> None:
    stack = slow_ledger_stack
    _hub_ready(stack)
    assert stack.processor is not None
    run = Experiment("race", settings=stack.settings).start_logging(name="fails-early")
    run.log("loss", 1.0, step=0)
    assert run.flush(30)
    wait_until(lambda: _status(stack.store, run.id) == "Running", 30, what="the run row stored")  # a ledger write just happened
    published = stack.processor.stats.live_messages
    run.fail("diverged")
    assert run.flush(30)
    # The processor has published the batch that carries Failed (before the fix: while the
    # ledger lane still held its run row back).
    wait_until(lambda: stack.processor.stats.live_messages > published, 30, what="the failing batch's live update published")  # type: ignore[union-attr]
    subscribed_at = time.monotonic()
    with _ws(stack) as ws:
        ws.send(json.dumps({"subscribe": {"run": run.id}}))
        seen = _recv_until(
            ws,
            lambda m, _: (
                (m.get("type") == "snapshot" and m["runs"] and m["runs"][0]["status"] == "Failed")
                or (m.get("type") == "update" and m.get("status") == "Failed")
            ),
            timeout=LEDGER_INTERVAL * 3,
        )
    assert seen[-1].get("status", seen[-1].get("runs", [{}])[0].get("status")) == "Failed"
    print(f"Failed seen {time.monotonic() - subscribed_at:.2f} s after subscribing")


def test_updates_that_change_a_run_row_wait_for_the_ledger() -> None:
    from runstream.processor.live import split_by_durability

    points = {"type": "update", "run": "a", "metrics": {"loss": {"s": [1], "v": [0.5], "n": 1}}}
    ended = {"type": "update", "run": "b", "status": "Failed", "metrics": {"loss": {"s": [2], "v": [0.1], "n": 1}}}
    tagged = {"type": "update", "run": "c", "meta": True}
    logs = {"type": "update", "run": "d", "logs": [{"stream": "stdout", "line": "x", "ts": 1.0}]}
    assert split_by_durability([points, ended, tagged, logs]) == ([points, logs], [ended, tagged])  # type: ignore[list-item]
