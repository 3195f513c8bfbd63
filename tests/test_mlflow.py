"""The MLflow-compatible tracking API, driven by the real `mlflow` client (docs/mlflow.md)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from tests.conftest import Stack, wait_until  # noqa: E402


@pytest.fixture()
def tracking(stack: Stack) -> Iterator[MlflowClient]:
    mlflow.set_tracking_uri(stack.api_url)
    yield MlflowClient(tracking_uri=stack.api_url)
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_quickstart_lands_in_runstream(tracking: MlflowClient, stack: Stack) -> None:
    name = _name("quickstart")
    experiment_id = mlflow.set_experiment(name).experiment_id
    with mlflow.start_run(run_name="first") as run:
        mlflow.log_param("alpha", 0.5)
        mlflow.log_params({"l1_ratio": "0.1", "solver": "auto"})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"rmse": 0.7, "r2": 0.3}, step=4)
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"stage": "dev"})
    run_id = run.info.run_id
    got = tracking.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.info.experiment_id == experiment_id
    assert got.info.run_name == "first"
    assert got.info.end_time is not None and got.info.end_time >= got.info.start_time
    assert got.data.params == {"alpha": "0.5", "l1_ratio": "0.1", "solver": "auto"}
    assert got.data.metrics == {"loss": 0.2, "rmse": 0.7, "r2": 0.3}
    assert got.data.tags["team"] == "vision" and got.data.tags["stage"] == "dev"
    assert got.data.tags["mlflow.runName"] == "first"
    history = tracking.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / (s + 1)) for s in range(5)]
    # a param is immutable, as in MLflow
    with pytest.raises(MlflowException) as err:
        tracking.log_param(run_id, "alpha", 0.6)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    tracking.log_param(run_id, "alpha", 0.5)  # the same value again is fine
    with pytest.raises(MlflowException) as err:
        tracking.get_run(uuid.uuid4().hex)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert tracking.get_experiment_by_name(name).experiment_id == experiment_id
