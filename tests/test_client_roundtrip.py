"""Client -> Kafka -> processor -> ClickHouse -> api -> get_metrics(), on real services."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from runstream import Experiment, Run
from runstream.config import Settings
from runstream.ingest.values import InvalidInput
from tests.conftest import Stack, wait_until


def test_reference_ridge_sweep_roundtrips_exactly(settings: Settings, tmp_path) -> None:
    import pickle

    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.metrics import mean_squared_error
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
    exp = Experiment("train-within-notebook", settings=settings)
    run = exp.start_logging()
    alphas = np.arange(0.0, 1.0, 0.05)
    expected_mse = []
    for alpha in alphas:
        model = Ridge(alpha=alpha).fit(X_train, y_train)
        mse = mean_squared_error(y_test, model.predict(X_test))
        run.log("alpha", alpha)
        run.log("mse", mse)
        expected_mse.append(mse)
        path = tmp_path / f"model_alpha_{alpha:.2f}.pkl"
        path.write_bytes(pickle.dumps(model))
        run.upload_file(f"outputs/{path.name}", str(path))
    run.complete()

    metrics = run.get_metrics()
    assert metrics["alpha"] == [float(a) for a in alphas]
    assert metrics["mse"] == expected_mse
    best = int(np.argmin(metrics["mse"]))
    assert metrics["alpha"][best] == float(alphas[int(np.argmin(expected_mse))])
    assert sorted(run.get_file_names()) == sorted(f"outputs/model_alpha_{a:.2f}.pkl" for a in alphas)
    details = run.get_details()
    assert details["status"] == "Completed"
    assert details["metrics"]["mse"]["min"] == min(expected_mse)
    assert details["metrics"]["mse"]["count"] == len(alphas)


def test_every_logging_kind_roundtrips(settings: Settings, stack: Stack) -> None:
    exp = Experiment("kinds", settings=settings)
    with exp.start_logging(name="all-kinds", tags={"team": "vision"}, params={"lr": 0.001, "layers": 4}) as run:
        run.log("alpha", 0.03)
        run.log("loss", 0.5, step=10)
        run.log("loss", 0.25, step=20)
        run.log_metrics({"acc": 0.9, "f1": 0.8}, step=3)
        run.log_metrics({"acc": 0.95, "f1": 0.85})
        run.log("status_text", "warming up")
        run.log("diverged", math.nan)
        run.log("overflow", math.inf)
        run.log_list("Fibonacci", [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89])
        for i in range(-10, 10):
            run.log("Sigmoid", 1 / (1 + math.exp(-i)))
        for a in range(5):
            run.log_row("Cosine Wave", angle=a * 0.1, cos=math.cos(a * 0.1))
        run.log_table("Sine Wave", {"angle": [0.0, 0.5, 1.0], "sine": [0.0, math.sin(0.5), math.sin(1.0)]})
        run.log_table("labels", {"class": ["cat", "dog"], "count": [3, 4]})
        run.log_text("stdout", "epoch 1 done\nepoch 2 done")
        run.tag("selected", "yes")
        run.tag("flag")
        run.log_params({"optimizer": "adam"})
        child = run.child_run("fold-1")
        child.log("mse", 1.5)
        child.complete()

    metrics = run.get_metrics()
    assert metrics["alpha"] == 0.03
    assert metrics["loss"] == [0.5, 0.25]
    assert metrics["acc"] == [0.9, 0.95]
    assert metrics["f1"] == [0.8, 0.85]
    assert metrics["status_text"] == "warming up"
    assert metrics["diverged"] is None and metrics["overflow"] is None  # non-finite values read back as null
    assert metrics["Fibonacci"] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]
    assert metrics["Sigmoid"] == [1 / (1 + math.exp(-i)) for i in range(-10, 10)]
    assert metrics["Cosine Wave"] == {"angle": [a * 0.1 for a in range(5)], "cos": [math.cos(a * 0.1) for a in range(5)]}
    assert metrics["Sine Wave"] == {"angle": [0.0, 0.5, 1.0], "sine": [0.0, math.sin(0.5), math.sin(1.0)]}
    assert metrics["labels"] == {"class": ["cat", "dog"], "count": [3, 4]}

    details = run.get_details()
    assert details["status"] == "Completed"
    assert details["tags"] == {"team": "vision", "selected": "yes", "flag": ""}
    assert details["params"] == {"lr": "0.001", "layers": "4", "optimizer": "adam"}
    assert [c["name"] for c in details["children"]] == ["fold-1"]
    assert details["metrics"]["loss"]["first"] == 0.5 and details["metrics"]["loss"]["last"] == 0.25
    assert details["metrics"]["loss"]["last_step"] == 20
    assert details["metrics"]["diverged"]["min"] is None
    assert child.get_metrics() == {"mse": 1.5}
    assert child.get_details()["parent"] == run.id

    import httpx

    logs = httpx.get(f"{stack.api_url}/api/v1/runs/{run.id}/logs").json()
    assert [line["line"] for line in logs["lines"]] == ["epoch 1 done", "epoch 2 done"]
    series = httpx.get(f"{stack.api_url}/api/v1/runs/{run.id}/metrics/loss").json()
    assert series["steps"] == [10, 20] and series["values"] == [0.5, 0.25]


def test_fifty_concurrent_runs_land_with_exact_counts(settings: Settings, stack: Stack) -> None:
    exp = Experiment("concurrency", settings=settings)
    runs: list[Run] = []
    lock = threading.Lock()

    def train(i: int) -> None:
        run = exp.start_logging(name=f"worker-{i}")
        with lock:
            runs.append(run)
        for step in range(400):
            run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 400.0}, step=step)
            run.log("i", float(i))
        run.complete()

    threads = [threading.Thread(target=train, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [r.id for r in runs]

    def stored() -> list[tuple[str, int]]:
        return stack.store.query_rows(
            "SELECT metric, count() FROM metric_points WHERE run_id IN {ids:Array(String)} GROUP BY metric ORDER BY metric",
            {"ids": ids},
        )

    wait_until(lambda: stored() == [("acc", 50 * 400), ("i", 50 * 400), ("loss", 50 * 400)], 60, what="all 60,000 points")
    per_run = stack.store.query_rows(
        "SELECT run_id, count(), uniqExact(metric, step) FROM metric_points WHERE run_id IN {ids:Array(String)} GROUP BY run_id",
        {"ids": ids},
    )
    assert len(per_run) == 50 and all(c == 1200 and u == 1200 for _, c, u in per_run)
    # Run rows land in the same batch as the points but in a later insert: wait, don't race.
    wait_until(
        lambda: (
            stack.store.query_rows("SELECT status, count() FROM runs FINAL WHERE run_id IN {ids:Array(String)} GROUP BY status", {"ids": ids})
            == [("Completed", 50)]
        ),
        30,
        what="50 runs Completed",
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: r.log("", 1.0), "must not be empty"),
        (lambda r: r.log("x" * 300, 1.0), "the limit is 255"),
        (lambda r: r.log(42, 1.0), "must be a string"),
        (lambda r: r.log("loss", [1, 2]), "must be a number or a string"),
        (lambda r: r.log("loss", {"a": 1}), "must be a number or a string"),
        (lambda r: r.log("loss", None), "must be a number or a string"),
        (lambda r: r.log("loss", 1.0, step="ten"), "step must be an integer"),
        (lambda r: r.log_metrics([1, 2]), "mapping"),
        (lambda r: r.log_list("l", "abc"), "list of values"),
        (lambda r: r.log_table("t", {"x": [1, 2], "y": [1]}), "differ in length"),
        (lambda r: r.log_table("t", {}), "non-empty dict"),
        (lambda r: r.log_row("r"), "at least one column"),
        (lambda r: r.tag("", "v"), "must not be empty"),
        (lambda r: r.log_image("img"), "exactly one of"),
    ],
)
def test_invalid_client_input_raises_at_once(settings: Settings, call, message: str) -> None:
    run = Experiment("invalid", settings=settings).start_logging()
    with pytest.raises(InvalidInput, match=message):
        call(run)
    run.log("ok", 1.0)  # the run stays usable
    run.complete()


def test_numpy_scalars_and_bools_are_numbers(settings: Settings) -> None:
    run = Experiment("numpy", settings=settings).start_logging()
    run.log("np64", np.float64(0.5))
    run.log("np32", np.float32(0.25))
    run.log("npint", np.int64(7))
    run.log("flag", True)
    run.complete()
    assert run.get_metrics() == {"np64": 0.5, "np32": 0.25, "npint": 7.0, "flag": 1.0}


def test_log_metrics_with_known_names_stores_what_the_general_path_would(settings: Settings, stack: Stack) -> None:
    """The second call with the same names takes the training-loop fast path: ints, bools,
    numpy scalars and non-finite values must come out as from the first (general) call,
    and values the general path refuses are refused there too."""
    exp = Experiment("fast-path", settings=settings)
    run = exp.start_logging(name="mixed")
    rows = [
        {"a": 1, "b": True, "c": 0.5, "d": np.float32(0.25)},
        {"a": 2, "b": False, "c": 1.5, "d": np.float32(0.75)},
        {"a": 3.0, "b": 1, "c": math.nan, "d": 1.0},
        {"a": 2**60, "b": 0.0, "c": -math.inf, "d": 2.0},
    ]
    for step, row in enumerate(rows):
        run.log_metrics(row, step=step)
    with pytest.raises(InvalidInput, match="too large"):
        run.log_metrics({"a": 10**400, "b": 1.0, "c": 1.0, "d": 1.0}, step=9)
    with pytest.raises(InvalidInput, match="must be a number or a string"):
        run.log_metrics({"a": None, "b": 1.0, "c": 1.0, "d": 1.0}, step=9)
    run.complete()
    metrics = run.get_metrics()
    assert metrics["a"] == [1.0, 2.0, 3.0, float(2**60)]
    assert metrics["b"] == [1.0, 0.0, 1.0, 0.0]
    assert metrics["c"] == [0.5, 1.5, None, None]
    assert metrics["d"] == [0.25, 0.75, 1.0, 2.0]
