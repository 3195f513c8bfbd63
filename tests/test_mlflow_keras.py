"""Keras 3 autologging (`mlflow.keras.autolog()`, JAX backend) lands in runstream's tables (docs/mlflow.md)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported: it picks its backend once

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from tests.conftest import Stack  # noqa: E402
from tests.test_mlflow import MlflowClient, _name, mlflow, tracking  # noqa: E402, F401  (tracking is the fixture)

EPOCHS, BATCH = 3, 32


@pytest.mark.one_engine  # its subject is the client's calls; the storage reads it makes run on both engines in test_mlflow.py
def test_keras_autolog_on_jax_lands_in_runstream(
    tracking: MlflowClient,  # noqa: F811  (the fixture imported above)
    stack: Stack,
) -> None:
    # Imported here, not at collection: importing keras takes ~5 s, paid only when this test runs.
    keras = pytest.importorskip("keras")
    import mlflow.keras

    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 8)).astype("float32")
    y = (X @ rng.normal(size=(8, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    experiment = _name("keras-autolog")
    mlflow.set_experiment(experiment)
    mlflow.keras.autolog(silent=True)  # Keras 3, any backend (mlflow.tensorflow.autolog patches tf.keras: needs TensorFlow)
    try:
        with mlflow.start_run(run_name="keras-jax") as run:
            history = model.fit(X, y, epochs=EPOCHS, batch_size=BATCH, validation_split=0.25, verbose=0).history
    finally:
        mlflow.keras.autolog(disable=True)
    run_id, api = run.info.run_id, stack.api_url

    # runstream's run list: the run, Completed, with the params autolog took from fit() and the optimizer
    listed = httpx.get(f"{api}/api/v1/runs", params={"experiment": experiment, "metrics": "loss,val_loss"}, timeout=30).json()["runs"]
    assert [(r["id"], r["name"], r["status"]) for r in listed] == [(run_id, "keras-jax", "Completed")]
    params = listed[0]["params"]
    assert {k: params[k] for k in ("epochs", "batch_size", "validation_split", "optimizer_name")} == {
        "epochs": "3",
        "batch_size": "32",
        "validation_split": "0.25",
        "optimizer_name": "adam",
    }
    assert float(params["optimizer_learning_rate"]) == pytest.approx(0.01)
    assert listed[0]["metrics"]["loss"]["count"] == EPOCHS and listed[0]["metrics"]["val_loss"]["count"] == EPOCHS

    # the run's metric summaries: one point per epoch at steps 0..2 (on_epoch_end, step=epoch) ...
    summaries = httpx.get(f"{api}/api/v1/runs/{run_id}", timeout=30).json()["metrics"]
    for key in ("loss", "val_loss", "mae", "val_mae"):
        assert (summaries[key]["count"], summaries[key]["last_step"], summaries[key]["last"]) == (EPOCHS, EPOCHS - 1, history[key][-1]), key
        series = httpx.get(f"{api}/api/v1/runs/{run_id}/metrics/{key}", timeout=30).json()
        assert (series["steps"], series["values"]) == (list(range(EPOCHS)), history[key]), key
    # ... and the callback's on_test_end copies (validation_<key>), logged each epoch without a step: 3 points at step 0
    for key in ("validation_loss", "validation_mae"):
        assert (summaries[key]["count"], summaries[key]["last_step"]) == (EPOCHS, 0), key
    assert set(summaries) == {"loss", "val_loss", "mae", "val_mae", "validation_loss", "validation_mae"}

    # the run's own artifact (the model summary) in runstream's file listing and download
    files = {f["path"]: f for f in httpx.get(f"{api}/api/v1/runs/{run_id}/files", timeout=30).json()}
    assert set(files) == {"model_summary.txt"} and files["model_summary.txt"]["size"] > 0
    summary = httpx.get(f"{api}/api/v1/runs/{run_id}/files/model_summary.txt", timeout=30).text
    assert "Total params" in summary and "dense" in summary

    # the MLflow view: the training set as an input, the model as an output, its files under the logged model
    got = tracking.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert [(d.dataset.source_type, [t.value for t in d.tags]) for d in got.inputs.dataset_inputs] == [("code", ["train"])]
    [output] = got.outputs.model_outputs
    logged = mlflow.get_logged_model(output.model_id)
    assert logged.source_run_id == run_id and str(logged.status) in ("READY", "LoggedModelStatus.READY")
    location = logged.artifact_location
    listed_model = {f.path for f in mlflow.artifacts.list_artifacts(artifact_uri=location)}
    assert {"artifacts/MLmodel", "artifacts/data", "artifacts/requirements.txt"} <= listed_model
    assert {"data/model.keras", "data/keras_module.txt"} <= {f.path for f in mlflow.artifacts.list_artifacts(artifact_uri=f"{location}/data")}
    flavor = yaml.safe_load(mlflow.artifacts.load_text(f"{location}/MLmodel"))["flavors"]["keras"]
    assert (flavor["keras_version"], flavor["keras_backend"], flavor["save_exported_model"]) == (keras.__version__, keras.backend.backend(), False)

    # the logged model, downloaded from runstream and reloaded (pyfunc over keras.saving.load_model), predicts as the trained one
    loaded = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
    np.testing.assert_allclose(loaded.predict(X[:8]), model.predict(X[:8], verbose=0), rtol=1e-6)
