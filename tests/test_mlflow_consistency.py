"""Read-after-write across api instances: an MLflow client behind a load balancer writes
through one api and reads through another, and every read sees every write before it.

Two apis on one pipeline: A runs with the processor, B is a second api with none (as
`runstream api` beside `runstream up`). The processor's ledger lane is held to one write
a second, so a write is acknowledged long before it is stored and a read that did not
wait would miss it. B learns of A's writes only through Kafka's end offsets and the
processor group's committed offsets (api/mlflow/progress.py)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric  # noqa: E402

from runstream.storage.store import Store  # noqa: E402
from tests.conftest import Stack, free_port, new_settings, wait_until  # noqa: E402

LEDGER_INTERVAL = 1.0  # the processor stores a batch's run rows and ledger at most this often


@pytest.fixture()
def two_apis(home: Path, kafka_bootstrap: str, store: Store) -> Iterator[tuple[Stack, str]]:
    from runstream.api.app import create_app, listen_socket, server_config

    stack = Stack(new_settings(home, kafka_bootstrap, topic_prefix=f"raw{uuid.uuid4().hex[:8]}"), store, ledger_interval=LEDGER_INTERVAL)
    stack.settings = stack.settings.with_(api=stack.api_url, clickhouse=store.dsn)
    stack.start()
    port = free_port()
    server = uvicorn.Server(server_config(create_app(stack.settings, store), "127.0.0.1", port, lifespan="on"))
    serving = asyncio.run_coroutine_threadsafe(server.serve(sockets=[listen_socket("127.0.0.1", port)]), stack.loop)
    wait_until(lambda: server.started, 30, what="second api")
    try:
        yield stack, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        serving.result(15)  # its lifespan closed its Kafka clients
        stack.stop()


def test_reads_through_another_api_see_every_write_before_them(two_apis: tuple[Stack, str]) -> None:
    stack, other = two_apis
    a, b = MlflowClient(tracking_uri=stack.api_url), MlflowClient(tracking_uri=other)
    exp = a.create_experiment(f"raw-{uuid.uuid4().hex[:6]}")
    rid = a.create_run(exp, run_name="balanced").info.run_id
    # A run created through A is a run for B at once: B checks it before storing B's write.
    b.log_batch(rid, metrics=[Metric("loss", 1.0, int(time.time() * 1000), 0)])
    for step in range(1, 8):
        ts = int(time.time() * 1000)
        a.log_batch(rid, metrics=[Metric("loss", 1.0 / (step + 1), ts, step), Metric("acc", step / 10, ts, step)])
        run = b.get_run(rid)
        assert run.data.metrics == {"loss": 1.0 / (step + 1), "acc": step / 10}, f"step {step}"
        assert [m.step for m in b.get_metric_history(rid, "loss")] == list(range(step + 1))
    a.log_param(rid, "alpha", "0.5")
    assert b.get_run(rid).data.params == {"alpha": "0.5"}
    a.set_terminated(rid, "FINISHED")
    assert b.get_run(rid).info.status == "FINISHED"
    found = b.search_runs([exp], "metrics.acc > 0.65")
    assert [r.info.run_id for r in found] == [rid]

    stats = httpx.get(f"{other}/api/2.0/mlflow/runstream/consistency").json()
    # The reads had to wait (the ledger lags by up to a second), never timed out, were all checked.
    assert stats["waited"] >= 5 and stats["timeouts"] == 0 and stats["unchecked"] == 0, stats
    assert stats["wait_ms_max"] < 5_000, stats
