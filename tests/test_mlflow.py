"""The MLflow-compatible tracking API, driven by the real `mlflow` client (docs/mlflow.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from tests.conftest import Stack, free_port, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on SQLite, on a free loopback port, for this module."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (folder / "server.log").read_text(errors="replace")[-2000:]
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 120, 0.2, what="mlflow server")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture()
def tracking(stack: Stack) -> Iterator[MlflowClient]:
    mlflow.set_tracking_uri(stack.api_url)
    yield MlflowClient(tracking_uri=stack.api_url)
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _recv_until(ws: Any, seen: list[dict[str, Any]], predicate: Any, timeout: float = 20) -> None:
    """Reads /ws messages (an `updates` frame item by item) into `seen` until one matches."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        for item in msg["updates"] if msg.get("type") == "updates" else [msg]:
            seen.append(item)
            if predicate(item):
                return
    raise AssertionError(f"no such message; got {seen[-3:]}")


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


def test_log_batch_of_1000_points_and_history_exactly_as_logged(tracking: MlflowClient) -> None:
    experiment_id = tracking.create_experiment(_name("batch"))
    run_id = tracking.create_run(experiment_id, run_name="batch").info.run_id
    base = 1_700_000_000_123
    logged = [Metric("loss", 1.0 / (i + 1), base + i * 7, i) for i in range(500)]
    logged += [Metric("acc", i * 0.001, base + i, i // 2) for i in range(499)]
    logged.append(Metric("acc", float("nan"), base + 999, 999))
    assert len(logged) == 1000
    tracking.log_batch(run_id, metrics=logged, params=[Param("lr", "0.01")], tags=[RunTag("kind", "batch")])
    for key in ("loss", "acc"):
        want = [(m.key, m.value, m.timestamp, m.step) for m in logged if m.key == key]
        got = [(m.key, m.value, m.timestamp, m.step) for m in tracking.get_metric_history(run_id, key)]
        assert len(got) == len(want)
        assert got[:-1] == want[:-1] and got[-1][2:] == want[-1][2:]
        if key == "acc":
            assert got[-1][1] != got[-1][1]  # NaN stays NaN
        else:
            assert got[-1] == want[-1]
    # the same batch again (a client retry) is stored once
    tracking.log_batch(run_id, metrics=logged, params=[Param("lr", "0.01")], tags=[RunTag("kind", "batch")])
    assert len(tracking.get_metric_history(run_id, "loss")) == 500
    run = tracking.get_run(run_id)
    assert run.data.params == {"lr": "0.01"} and run.data.tags["kind"] == "batch"
    assert run.data.metrics["loss"] == 1.0 / 500
    tracking.set_terminated(run_id, status="KILLED")
    assert tracking.get_run(run_id).info.status == "KILLED"
    tracking.update_run(run_id, status="FAILED")
    assert tracking.get_run(run_id).info.status == "FAILED"


def test_tags_delete_restore_and_errors(tracking: MlflowClient, stack: Stack) -> None:
    from websockets.sync.client import connect

    from runstream import Experiment
    from runstream.api.mlflow.reads import DELETED_TAG_VALUE

    api = stack.api_url

    def stored_tags(run_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """The run's tags from /api/v1/runs/{id} and from SQL over the runs view."""
        got = httpx.get(f"{api}/api/v1/runs/{run_id}", timeout=30)
        rest = got.json()["tags"] if got.status_code == 200 else {"(missing)": str(got.status_code)}
        answer = httpx.post(f"{api}/api/v1/query", json={"sql": f"SELECT tags FROM runs WHERE run_id = '{run_id}'"}, timeout=30)
        assert answer.status_code == 200, answer.text
        rows = answer.json()["rows"]
        return rest, rows[0][0] if rows else {"(missing)": "no row"}

    experiment_id = tracking.create_experiment(_name("lifecycle"), tags={"owner": "me"})
    with pytest.raises(MlflowException) as err:
        tracking.create_experiment(tracking.get_experiment(experiment_id).name)
    assert err.value.error_code == "RESOURCE_ALREADY_EXISTS"
    assert tracking.get_experiment(experiment_id).tags == {"owner": "me"}
    run_id = tracking.create_run(experiment_id).info.run_id
    tracking.set_tag(run_id, "temp", "1")
    tracking.set_tag(run_id, "keep", "yes")
    assert tracking.get_run(run_id).data.tags["temp"] == "1"  # read-after-write: stored once this returns
    assert all(tags["temp"] == "1" for tags in stored_tags(run_id))
    with connect(api.replace("http://", "ws://") + "/ws", open_timeout=10) as ws:
        ws.send(json.dumps({"subscribe": {"run": run_id}}))
        seen: list[dict[str, Any]] = []

        def recv_until(predicate: Any) -> None:
            _recv_until(ws, seen, predicate)

        recv_until(lambda m: m.get("type") == "snapshot")
        tracking.delete_tag(run_id, "temp")

        # A live subscriber is told the run row changed (sent once that row is stored); the
        # dashboard's run page then rereads the run, and the row it reads lacks the tag (an
        # update of the earlier set-tag may still arrive first: then the tag is still there).
        def reread_lacks_temp(m: dict[str, Any]) -> bool:
            if not (m.get("type") == "update" and m.get("run") == run_id and m.get("meta")):
                return False
            tags = httpx.get(f"{api}/api/v1/runs/{run_id}", timeout=30).json()["tags"]
            return "temp" not in tags and tags["keep"] == "yes"

        recv_until(reread_lacks_temp)
    assert "temp" not in tracking.get_run(run_id).data.tags
    for tags in stored_tags(run_id):  # removed, not stored as a marker
        assert "temp" not in tags and tags["keep"] == "yes" and DELETED_TAG_VALUE not in tags.values()
    with pytest.raises(MlflowException) as err:
        tracking.delete_tag(run_id, "temp")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    tracking.set_tag(run_id, "temp", "2")  # a deleted tag can be set again
    assert tracking.get_run(run_id).data.tags["temp"] == "2"
    # A row stored before deletion removed tags holds the legacy marker: MLflow still hides it.
    legacy = {"v": 1, "id": f"legacy:{uuid.uuid4().hex}", "kind": "tags", "run": run_id, "project": "default", "ts": time.time()}
    legacy["tags"] = {"old": DELETED_TAG_VALUE}
    assert httpx.post(f"{api}/api/v1/events", json={"events": [legacy]}, timeout=30).status_code == 202
    wait_until(lambda: stored_tags(run_id)[0].get("old") == DELETED_TAG_VALUE, what="the legacy marker stored")
    assert "old" not in tracking.get_run(run_id).data.tags
    with pytest.raises(MlflowException) as err:
        tracking.delete_tag(run_id, "old")
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    # The runstream client's own tags: set at the start, by tag() (a tag without value is ""),
    # and after MLflow's delete-tag removed one, set again.
    own = Experiment(_name("client-tags"), settings=stack.settings).start_logging(name="own", tags={"model": "mlp"}, capture_output=False)
    own.tag("selected", "yes")
    own.tag("flag")
    own.flush()
    wait_until(lambda: stored_tags(own.id) == ({"model": "mlp", "selected": "yes", "flag": ""},) * 2, what="the client's tags")
    tracking.delete_tag(own.id, "selected")
    wait_until(lambda: stored_tags(own.id) == ({"model": "mlp", "flag": ""},) * 2, what="the client's tag removed")
    own.tag("selected", "again")
    own.complete()
    wait_until(lambda: stored_tags(own.id)[0] == {"model": "mlp", "flag": "", "selected": "again"}, what="the client's tag set again")
    tracking.delete_run(run_id)
    assert tracking.get_run(run_id).info.lifecycle_stage == "deleted"
    assert tracking.search_runs([experiment_id]) == []
    from mlflow.entities import ViewType

    assert [r.info.run_id for r in tracking.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY)] == [run_id]
    tracking.restore_run(run_id)
    assert [r.info.run_id for r in tracking.search_runs([experiment_id])] == [run_id]
    with pytest.raises(MlflowException) as err:
        tracking.search_runs([experiment_id], filter_string="metrics.x ~ 1")
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    tracking.rename_experiment(experiment_id, name := _name("renamed"))
    assert tracking.get_experiment_by_name(name).experiment_id == experiment_id
    assert [r.info.run_id for r in tracking.search_runs([experiment_id])] == [run_id]
    tracking.delete_experiment(experiment_id)
    assert tracking.get_experiment(experiment_id).lifecycle_stage == "deleted"


def test_artifacts_up_and_down(tracking: MlflowClient, stack: Stack, tmp_path: Any) -> None:
    experiment_id = tracking.create_experiment(_name("artifacts"))
    run = tracking.create_run(experiment_id)
    assert run.info.artifact_uri == f"mlflow-artifacts:/{experiment_id}/{run.info.run_id}/artifacts"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "notes.txt").write_text("hello artifacts")
    (src / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 40)
    tracking.log_artifact(run.info.run_id, str(src / "notes.txt"))
    tracking.log_artifacts(run.info.run_id, str(src / "sub"), artifact_path="model")
    listed = sorted((f.path, f.is_dir, f.file_size) for f in tracking.list_artifacts(run.info.run_id))
    assert listed == [("model", True, None), ("notes.txt", False, 15)]
    assert [f.path for f in tracking.list_artifacts(run.info.run_id, "model")] == ["model/weights.bin"]
    out = tmp_path / "out"
    out.mkdir()
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(out))
    assert (out / "notes.txt").read_text() == "hello artifacts"
    assert (out / "model" / "weights.bin").read_bytes() == bytes(range(256)) * 40
    assert local
    files = wait_until(
        lambda: {f["path"] for f in httpx.get(f"{stack.api_url}/api/v1/runs/{run.info.run_id}/files").json()} >= {"notes.txt", "model/weights.bin"},
        what="files in runstream's run view",
    )
    assert files


def _sweep(client: MlflowClient, experiment_id: str) -> None:
    """The same runs on either server: params, tags, metrics at steps, statuses."""
    rows = [
        ("r0", "0.1", "vision", [0.9, 0.5, 0.31], "FINISHED"),
        ("r1", "0.2", "vision", [0.8, 0.42], "FINISHED"),
        ("r2", "0.3", "nlp", [0.7, 0.2], "FAILED"),
        ("r3", "0.4", "vision-x", [0.6, 0.35, 0.27], "FINISHED"),
        ("r4", "0.5", "speech", [0.95], "RUNNING"),
        ("r5", "0.6", "Vision", [0.85, 0.45], "FINISHED"),
    ]
    for i, (name, alpha, team, rmse, status) in enumerate(rows):
        run_id = client.create_run(experiment_id, run_name=name, start_time=1_700_000_000_000 + i * 1000).info.run_id
        metrics = [Metric("rmse", v, 1_700_000_000_000 + s, s) for s, v in enumerate(rmse)] + [Metric("size", float(10 - i), 1_700_000_000_000, 0)]
        params = [Param("alpha", alpha), Param("solver", "auto" if i % 2 == 0 else "svd")]
        client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag("team", team)])
        if status != "RUNNING":
            client.set_terminated(run_id, status=status, end_time=1_700_000_100_000 + i)


SEARCHES: list[tuple[str, list[str]]] = [
    ("metrics.rmse < 0.4 AND params.solver = 'auto'", ["metrics.rmse DESC"]),
    ("tags.team LIKE 'vision%'", ["params.alpha DESC"]),
    ("tags.team ILIKE 'vision%' AND metrics.size >= 5", ["metrics.rmse ASC"]),
    ("attributes.status = 'FINISHED' AND params.alpha != '0.4'", ["attributes.start_time ASC"]),
    ("attributes.run_name != 'r3' AND metrics.size < 9", ["metrics.size ASC"]),
    ("params.missing IS NULL AND tags.team IS NOT NULL AND attributes.status != 'RUNNING'", ["attributes.end_time DESC"]),
    ("attributes.run_name LIKE 'r%' AND attributes.start_time > 1700000001500", ["attributes.run_name DESC"]),
    ("metrics.rmse > 0.3", []),
    ("", ["tags.team ASC", "attributes.run_name ASC"]),
]


def _answers(client: MlflowClient, experiment_id: str) -> list[list[tuple[Any, ...]]]:
    out = []
    for flt, order in SEARCHES:
        runs = client.search_runs([experiment_id], filter_string=flt, order_by=order)
        out.append(
            [
                (r.info.run_name, r.info.status, r.info.start_time, r.info.end_time, r.data.params, r.data.metrics, r.data.tags.get("team"))
                for r in runs
            ]
        )
    return out


def test_search_runs_answers_as_mlflow_server_does(tracking: MlflowClient, mlflow_server: str) -> None:
    theirs = MlflowClient(tracking_uri=mlflow_server)
    name = _name("search")
    ours_id, theirs_id = tracking.create_experiment(name), theirs.create_experiment(name)
    _sweep(tracking, ours_id)
    _sweep(theirs, theirs_id)
    ours_answers, theirs_answers = _answers(tracking, ours_id), _answers(theirs, theirs_id)
    for (flt, order), a, b in zip(SEARCHES, ours_answers, theirs_answers):
        assert a == b, f"filter {flt!r} order_by {order}: runstream {[r[0] for r in a]} vs MLflow {[r[0] for r in b]}"
    assert any(len(a) >= 2 for a in ours_answers)
    # page tokens: three pages of two give the whole ordered answer
    pages, token = [], None
    while True:
        page = tracking.search_runs([ours_id], order_by=["params.alpha ASC"], max_results=2, page_token=token)
        pages.append([r.info.run_name for r in page])
        token = page.token
        if not token:
            break
    assert pages == [["r0", "r1"], ["r2", "r3"], ["r4", "r5"]]
    assert [e.name for e in tracking.search_experiments(filter_string=f"name = '{name}'")] == [name]


@pytest.mark.one_engine  # its subject is the client's calls; the storage reads it makes run on both engines above
def test_sklearn_autolog_on_the_reference_ridge_sweep(tracking: MlflowClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's sweep (alpha 0.00..0.95 on diabetes, 80/20, random_state=0) under mlflow.sklearn.autolog()."""
    # Client-side only: MLflow infers a model's pip requirements in a subprocess that imports
    # the model (~5 s a model on this machine, no server call); the sweep logs 20 models.
    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: fallback or [])
    import numpy as np
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_squared_error
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    experiment_id = mlflow.set_experiment(_name("ridge-autolog")).experiment_id
    mlflow.sklearn.autolog(log_input_examples=False, log_model_signatures=True, log_datasets=True, silent=True)
    results: dict[str, float] = {}
    try:
        for alpha in np.arange(0.0, 1.0, 0.05):
            with mlflow.start_run(run_name=f"alpha-{alpha:.2f}") as run:
                model = Ridge(alpha=alpha).fit(X_train, y_train)
                mse = mean_squared_error(y_test, model.predict(X_test))
                mlflow.log_metric("mse", mse)
                results[run.info.run_id] = mse
    finally:
        mlflow.sklearn.autolog(disable=True)
    assert len(results) == 20
    runs = tracking.search_runs([experiment_id], order_by=["metrics.mse ASC"])
    assert [r.info.run_id for r in runs] == sorted(results, key=lambda k: results[k])
    best = runs[0]
    assert float(best.data.params["alpha"]) == min(np.arange(0.0, 1.0, 0.05), key=lambda a: abs(a - float(best.data.params["alpha"])))
    for r in runs:
        assert {"alpha", "fit_intercept", "solver"} <= set(r.data.params)
        assert {"training_mean_squared_error", "training_r2_score", "mse"} <= set(r.data.metrics)
        assert r.info.status == "FINISHED"
        assert r.data.metrics["mse"] == results[r.info.run_id]
    full = tracking.get_run(best.info.run_id)
    assert full.inputs.dataset_inputs, "autolog logged the training data set"
    assert full.outputs.model_outputs, "autolog logged a model for the run"
    model_id = full.outputs.model_outputs[0].model_id
    logged = mlflow.get_logged_model(model_id)
    assert logged.source_run_id == best.info.run_id and str(logged.status) in ("READY", "LoggedModelStatus.READY")
    files = {f.path for f in mlflow.artifacts.list_artifacts(artifact_uri=logged.artifact_location)}
    assert {"artifacts/MLmodel", "artifacts/model.pkl"} <= files
    loaded = mlflow.sklearn.load_model(f"models:/{model_id}")
    ridge = Ridge(alpha=float(best.data.params["alpha"])).fit(X_train, y_train)
    assert np.allclose(loaded.predict(X_test), ridge.predict(X_test))


def test_mlflow_runs_show_in_runs_api_websocket_and_sql(tracking: MlflowClient, stack: Stack) -> None:
    from websockets.sync.client import connect

    name = _name("visible")
    experiment_id = tracking.create_experiment(name)
    run_id = tracking.create_run(experiment_id, run_name="seen", tags={"via": "mlflow"}).info.run_id
    tracking.log_batch(run_id, metrics=[Metric("loss", 0.5, 1_700_000_000_000, 0)], params=[Param("alpha", "0.1")])
    tracking.get_run(run_id)  # read-after-write: stored once this returns
    listed = httpx.get(f"{stack.api_url}/api/v1/runs", params={"experiment": name, "metrics": "loss"}).json()["runs"]
    assert [(r["id"], r["name"], r["status"], r["params"], r["tags"]["via"]) for r in listed] == [
        (run_id, "seen", "Running", {"alpha": "0.1"}, "mlflow")
    ]
    assert listed[0]["metrics"]["loss"]["last"] == 0.5
    with connect(stack.api_url.replace("http://", "ws://") + "/ws", open_timeout=10) as ws:
        ws.send(json.dumps({"subscribe": {"run": run_id}}))
        seen: list[dict[str, Any]] = []

        def recv_until(predicate: Any) -> None:
            _recv_until(ws, seen, predicate)

        recv_until(lambda m: m.get("type") == "snapshot")
        tracking.log_metric(run_id, "loss", 0.25, step=1)
        recv_until(lambda m: m.get("type") == "update" and 1 in m.get("metrics", {}).get("loss", {}).get("s", []))
        tracking.set_terminated(run_id)
        recv_until(lambda m: m.get("type") == "update" and m.get("status") == "Completed")
    body = {"sql": f"SELECT metric, count() AS n, max(value) AS top FROM metric_points WHERE run_id = '{run_id}' GROUP BY metric"}
    answer = httpx.post(f"{stack.api_url}/api/v1/query", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert "loss" in answer.text and '"n"' in answer.text and "0.5" in answer.text


def test_tracking_token_is_a_runstream_key_with_its_project(stack: Stack, tmp_path: Path) -> None:
    from runstream.api.app import create_app, server_config
    from runstream.keys import KeyStore

    keys = KeyStore(tmp_path / "keys.json")
    token_a, _ = keys.create("mlflow-a")
    token_b, _ = keys.create("mlflow-b")
    app = create_app(stack.settings.with_(home=tmp_path), stack.store)
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, lifespan="on"))
    stack.loop.call_soon_threadsafe(lambda: stack.loop.create_task(server.serve()))
    wait_until(lambda: server.started, 15, what="server start")
    url = f"http://127.0.0.1:{port}"
    try:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token_a
        client = MlflowClient(tracking_uri=url)
        experiment_id = client.create_experiment(_name("keyed"))
        run_id = client.create_run(experiment_id, run_name="keyed").info.run_id
        client.log_metric(run_id, "loss", 0.1)
        assert client.get_run(run_id).data.metrics == {"loss": 0.1}
        rows = stack.store.query_rows("SELECT project FROM runs FINAL WHERE run_id = {r:String}", {"r": run_id})
        assert rows == [("mlflow-a",)]
        os.environ["MLFLOW_TRACKING_TOKEN"] = token_b
        with pytest.raises(MlflowException) as err:
            client.get_run(run_id)
        assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        with pytest.raises(MlflowException) as err:
            client.log_metric(run_id, "loss", 0.2)
        assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        del os.environ["MLFLOW_TRACKING_TOKEN"]
        assert httpx.get(f"{url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}).status_code == 401
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
        server.should_exit = True
