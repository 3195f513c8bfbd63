"""Analytics endpoints against the real embedded engine, every answer checked with numpy.

Runs are written straight into ClickHouse through the session `store` (no Kafka):
each test uses its own project / experiment / run ids, since the engine is
shared with the rest of the suite.
"""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from runstream.api.app import create_app
from runstream.api.sql_guard import Limits, QueryRefused, SqlEngine
from runstream.api.sql_views import scope_database
from runstream.config import Settings
from runstream.storage.schema import SUMMARIES_FROM_POINTS
from runstream.storage.store import Store

NOW = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class Fixture:
    project: str
    experiment: str
    runs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)  # run -> metric -> (steps, values)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)


def insert_runs(store: Store, fx: Fixture, names: dict[str, str] | None = None) -> None:
    """Write fx's runs (state rows), metric points and their summary rows (as the processor would)."""
    rows = []
    for run_id in fx.runs:
        rows.append(
            [fx.project, run_id, fx.experiment, (names or {}).get(run_id, f"name-{run_id[-4:]}"), "", "Completed", "", NOW, NOW, NOW,
             fx.tags.get(run_id, {}), {"seed": run_id[-2:]}, {}, 1]
        )  # fmt: skip
    store.insert_rows(
        "runs",
        rows,
        ["project", "run_id", "experiment", "name", "parent_id", "status", "error", "created_at", "ended_at", "last_seen", "tags", "params",
         "descriptions", "version"],
    )  # fmt: skip
    cols: dict[str, list[Any]] = {k: [] for k in ("project", "run_id", "metric", "step", "value")}
    for run_id, metrics in fx.runs.items():
        for metric, (steps, values) in metrics.items():
            n = len(steps)
            cols["project"] += [fx.project] * n
            cols["run_id"] += [run_id] * n
            cols["metric"] += [metric] * n
            cols["step"].append(np.asarray(steps, dtype=np.int64))
            cols["value"].append(np.asarray(values, dtype=np.float64))
    n = len(cols["project"])
    table = pa.table(
        {
            "project": pa.array(cols["project"], pa.string()),
            "run_id": pa.array(cols["run_id"], pa.string()),
            "metric": pa.array(cols["metric"], pa.string()),
            "step": pa.array(np.concatenate(cols["step"]), pa.int64()),
            "value": pa.array(np.concatenate(cols["value"]), pa.float64()),
            "value_str": pa.array([""] * n, pa.string()),
            "ts": pa.array(np.full(n, int(NOW.timestamp() * 1000)), pa.timestamp("ms")),
            "kafka_topic": pa.array(["test-analytics"] * n, pa.string()),
            "kafka_partition": pa.array(np.zeros(n, dtype=np.uint16), pa.uint16()),
            "kafka_offset": pa.array(np.arange(n, dtype=np.uint64), pa.uint64()),
        }
    )
    store.insert_arrow("metric_points", table)
    store.command("INSERT INTO metric_summaries " + SUMMARIES_FROM_POINTS.format(where="WHERE project = {p:String}"), {"p": fx.project})


def new_fixture(n_runs: int, metrics: dict[str, int], seed: int, tag_values: list[str] | None = None) -> Fixture:
    rng = np.random.default_rng(seed)
    uid = uuid.uuid4().hex[:10]
    fx = Fixture(project=f"proj-{uid}", experiment=f"exp-{uid}")
    for i in range(n_runs):
        run_id = f"run-{uid}-{i:03d}"
        fx.runs[run_id] = {}
        for metric, steps in metrics.items():
            # Runs log different numbers of steps, so step counts differ per step.
            n = max(2, steps - int(rng.integers(0, max(1, steps // 4))))
            fx.runs[run_id][metric] = (np.arange(n), rng.normal(1.0 + i * 0.01, 0.5, n))
        if tag_values:
            fx.tags[run_id] = {"lr": tag_values[i % len(tag_values)]}
    return fx


@pytest.fixture(scope="module")
def client(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings().with_(home=tmp_path_factory.mktemp("analytics-home"), clickhouse=store.dsn, api_key=None)
    app = create_app(settings, store)
    app.state.sql_limits = Limits(timeout_s=5.0)
    with TestClient(app) as c:
        yield c


def summary(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    return {
        "first": values[0],
        "last": values[-1],
        "min": finite.min() if finite.size else None,
        "max": finite.max() if finite.size else None,
        "mean": finite.mean() if finite.size else None,
        "count": len(values),
        "last_step": len(values) - 1,
    }


def close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


# --- compare -------------------------------------------------------------------
def test_compare_matches_numpy(store: Store, client: TestClient) -> None:
    fx = new_fixture(4, {"mse": 40, "alpha": 5}, seed=1)
    first = next(iter(fx.runs))
    fx.runs[first]["mse"][1][7] = np.nan  # NaN in the middle: counted, but not in min/max/mean
    insert_runs(store, fx)
    ids = list(fx.runs)
    r = client.get("/api/v1/compare", params={"runs": ",".join(ids + ["no-such-run"]), "metrics": "mse,alpha,absent"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["id"] for x in body["runs"]] == ids
    assert all(x["experiment"] == fx.experiment and x["status"] == "Completed" for x in body["runs"])
    assert body["metrics"]["absent"] == {}
    for metric in ("mse", "alpha"):
        assert set(body["metrics"][metric]) == set(ids)
        for run_id in ids:
            want = summary(fx.runs[run_id][metric][1])
            got = body["metrics"][metric][run_id]
            for k, v in want.items():
                assert close(got[k], v), (metric, run_id, k, got[k], v)


@pytest.mark.parametrize(
    "params", [{"runs": "", "metrics": "x"}, {"runs": "a", "metrics": " , "}, {"runs": ",".join(map(str, range(1001))), "metrics": "x"}]
)
def test_compare_refuses_bad_input(client: TestClient, params: dict[str, str]) -> None:
    r = client.get("/api/v1/compare", params=params)
    assert r.status_code == 400 and r.json()["detail"]


# --- leaderboard and order_by ------------------------------------------------------
@pytest.fixture(scope="module")
def board(store: Store) -> Fixture:
    fx = new_fixture(25, {"loss": 30}, seed=2)
    insert_runs(store, fx)
    other = new_fixture(3, {"loss": 30}, seed=3)  # another experiment, same metric: must not appear
    other.project = fx.project
    insert_runs(store, other)
    return fx


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("stat", ["last", "min", "max", "mean", "first"])
def test_leaderboard_matches_numpy(client: TestClient, board: Fixture, mode: str, stat: str) -> None:
    values = {run_id: summary(m["loss"][1])[stat] for run_id, m in board.runs.items()}
    want = sorted(values, key=lambda k: values[k], reverse=mode == "max")[:7]
    r = client.get("/api/v1/leaderboard", params={"experiment": board.experiment, "metric": "loss", "mode": mode, "stat": stat, "limit": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["metric"], body["mode"], body["stat"]) == ("loss", mode, stat)
    assert [x["id"] for x in body["runs"]] == want
    assert [x["rank"] for x in body["runs"]] == list(range(1, 8))
    for x in body["runs"]:
        assert close(x["value"], values[x["id"]])
        assert x["experiment"] == board.experiment and x["params"] == {"seed": x["id"][-2:]}


def test_leaderboard_default_stat_and_bad_mode(client: TestClient, board: Fixture) -> None:
    r = client.get("/api/v1/leaderboard", params={"experiment": board.experiment, "metric": "loss"})
    assert r.status_code == 200 and r.json()["stat"] == "last" and r.json()["mode"] == "min" and len(r.json()["runs"]) == 10
    assert client.get("/api/v1/leaderboard", params={"metric": "loss", "mode": "best"}).status_code == 422


@pytest.mark.parametrize("order", ["metric.loss", "-metric.loss", "metric.loss:min", "-metric.loss:max", "metric.loss:mean"])
def test_runs_order_by_metric(client: TestClient, board: Fixture, order: str) -> None:
    key = order.lstrip("-").split(".", 1)[1]
    stat = key.partition(":")[2] or "last"
    values = {run_id: summary(m["loss"][1])[stat] for run_id, m in board.runs.items()}
    want = sorted(values, key=lambda k: values[k], reverse=order.startswith("-"))
    r = client.get("/api/v1/runs", params={"experiment": board.experiment, "order_by": order, "limit": 100})
    assert r.status_code == 200, r.text
    assert [x["id"] for x in r.json()["runs"]] == want


# --- aggregate ----------------------------------------------------------------------
def numpy_aggregate(fx: Fixture, metric: str, max_points: int) -> dict[str, dict[str, list[float]]]:
    """The documented semantics: per-run bucket means, then mean / population std / count across runs."""
    out: dict[str, dict[str, list[float]]] = {}
    for key in sorted({t["lr"] for t in fx.tags.values()}):
        runs = [r for r in fx.runs if fx.tags[r]["lr"] == key]
        all_steps = np.unique(np.concatenate([fx.runs[r][metric][0] for r in runs]))
        first = int(all_steps.min())
        width = (int(all_steps.max()) - first) // max_points + 1 if len(all_steps) > max_points else 1
        per_bucket: dict[int, list[tuple[float, float, float, int]]] = {}
        for r in runs:
            steps, values = fx.runs[r][metric]
            buckets = (steps - first) // width
            for b in np.unique(buckets):
                sel = buckets == b
                per_bucket.setdefault(int(b), []).append((values[sel].mean(), values[sel].min(), values[sel].max(), int(steps[sel].min())))
        g: dict[str, list[float]] = {k: [] for k in ("steps", "mean", "std", "min", "max", "count")}
        for b in sorted(per_bucket):
            means = np.array([x[0] for x in per_bucket[b]])
            g["steps"].append(min(x[3] for x in per_bucket[b]))
            g["mean"].append(means.mean())
            g["std"].append(means.std(ddof=0))
            g["min"].append(min(x[1] for x in per_bucket[b]))
            g["max"].append(max(x[2] for x in per_bucket[b]))
            g["count"].append(len(means))
        out[key] = g
    return out


@pytest.mark.parametrize("max_points", [1000, 7])
def test_aggregate_matches_numpy(store: Store, client: TestClient, max_points: int) -> None:
    fx = new_fixture(9, {"acc": 50}, seed=4, tag_values=["0.1", "0.01", "0.001"])
    insert_runs(store, fx)
    r = client.get("/api/v1/aggregate", params={"experiment": fx.experiment, "metric": "acc", "group_by": "tag.lr", "max_points": max_points})
    assert r.status_code == 200, r.text
    body = r.json()
    want = numpy_aggregate(fx, "acc", max_points)
    assert [g["key"] for g in body["groups"]] == sorted(want)
    for g in body["groups"]:
        w = want[g["key"]]
        assert g["runs"] == 3
        assert g["steps"] == w["steps"] and g["count"] == w["count"]
        assert len(g["steps"]) <= max_points
        for k in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(g[k], w[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_aggregate_runs_filter_and_bad_group(store: Store, client: TestClient) -> None:
    fx = new_fixture(4, {"acc": 10}, seed=5, tag_values=["a", "b"])
    insert_runs(store, fx)
    ids = list(fx.runs)[:2]
    r = client.get("/api/v1/aggregate", params={"runs": ",".join(ids), "metric": "acc", "group_by": "param.seed"})
    assert r.status_code == 200, r.text
    assert sorted(g["key"] for g in r.json()["groups"]) == sorted(i[-2:] for i in ids)
    assert client.get("/api/v1/aggregate", params={"experiment": fx.experiment, "metric": "acc", "group_by": "status"}).status_code == 400


# --- downsampling -------------------------------------------------------------------
def test_lttb_keeps_ends_and_extremes(store: Store, client: TestClient) -> None:
    rng = np.random.default_rng(6)
    fx = new_fixture(1, {}, seed=6)
    run_id = next(iter(fx.runs))
    n = 20_000
    values = np.sin(np.arange(n) / 500.0) + rng.normal(0, 0.05, n)
    values[4321], values[15000] = 25.0, -30.0  # a spike and a dip
    fx.runs[run_id]["curve"] = (np.arange(n), values)
    insert_runs(store, fx)
    r = client.get(f"/api/v1/runs/{run_id}/metrics/curve", params={"max_points": 300})
    assert r.status_code == 200, r.text
    body = r.json()
    steps, got = np.array(body["steps"]), np.array(body["values"], dtype=float)
    assert body["downsampled"] and body["count"] == n and 3 <= len(steps) <= 300
    assert steps[0] == 0 and steps[-1] == n - 1
    assert np.all(np.diff(steps) > 0)
    np.testing.assert_array_equal(got, values[steps])  # only real points
    assert 4321 in steps and 15000 in steps
    assert got.max() == values.max() and got.min() == values.min()


# --- SQL -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sql_data(store: Store) -> Fixture:
    fx = new_fixture(5, {"mse": 20, "alpha": 3}, seed=7)
    insert_runs(store, fx)
    return fx


def q(client: TestClient, sql: str, **body: Any) -> Any:
    return client.post("/api/v1/query", json={"sql": sql, **body})


def test_query_json_matches_numpy(client: TestClient, sql_data: Fixture) -> None:
    r = q(client, f"SELECT run_id, count() AS n, avg(value) AS mean, max(step) AS last FROM metric_points "
                  f"WHERE project = '{sql_data.project}' AND metric = 'mse' GROUP BY run_id ORDER BY run_id")  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["run_id", "n", "mean", "last"] and body["types"][1] == "UInt64"
    assert body["row_count"] == 5 and body["truncated"] is False and body["elapsed_ms"] >= 0
    for (run_id, n, mean, last), want_id in zip(body["rows"], sorted(sql_data.runs), strict=True):
        values = sql_data.runs[want_id]["mse"][1]
        assert run_id == want_id and n == len(values) and close(mean, values.mean()) and last == len(values) - 1
    r = q(
        client, f"SELECT run_id, metric, last, min, mean, count FROM metric_summaries WHERE project = '{sql_data.project}' ORDER BY run_id, metric;"
    )
    assert r.status_code == 200, r.text
    for run_id, metric, last, lo, mean, count in r.json()["rows"]:
        want = summary(sql_data.runs[run_id][metric][1])
        assert close(last, want["last"]) and close(lo, want["min"]) and close(mean, want["mean"]) and count == want["count"]
    r = q(client, f"WITH x AS (SELECT run_id, tags FROM runs WHERE experiment = '{sql_data.experiment}') SELECT count() FROM x -- comment")
    assert r.status_code == 200 and r.json()["rows"] == [[5]]
    for view in ("tables", "logs", "files"):
        assert q(client, f"SELECT * FROM {view} LIMIT 1").status_code == 200


def test_query_limits_and_formats(client: TestClient, sql_data: Fixture) -> None:
    where = f"WHERE project = '{sql_data.project}'"
    total = sum(len(m[1]) for r in sql_data.runs.values() for m in r.values())
    r = q(client, f"SELECT run_id, metric, step, value FROM metric_points {where} ORDER BY run_id, metric, step", max_rows=10)
    assert r.status_code == 200 and r.json()["row_count"] == 10 and r.json()["truncated"] is True
    r = q(client, f"SELECT run_id, step, value FROM metric_points {where} ORDER BY run_id, step", format="csv", max_rows=100_000)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv") and r.headers["x-truncated"] == "false"
    lines = r.text.strip().split("\n")
    assert lines[0] == "run_id,step,value" and len(lines) == total + 1
    import pyarrow.parquet as pq

    r = q(client, f"SELECT run_id, step, value, tags FROM metric_points AS p JOIN runs USING (project, run_id) {where}", format="parquet")
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == total and table.column_names == ["run_id", "step", "value", "tags"]
    assert close(np.sum(table.column("value").to_numpy()), sum(np.sum(m[1]) for r in sql_data.runs.values() for m in r.values()))


def test_query_time_limit(client: TestClient, sql_data: Fixture) -> None:
    r = q(client, "SELECT count() FROM metric_points AS a, metric_points AS b, metric_points AS c, metric_points AS d", timeout_s=0.5)
    assert r.status_code == 408, r.text
    assert "imeout" in r.json()["detail"] or "time limit" in r.json()["detail"]


FORBIDDEN = [
    "INSERT INTO runs (project, run_id) VALUES ('forbidden-x', 'y')",
    "INSERT INTO default.runs (project, run_id) VALUES ('forbidden-x', 'y')",
    "INSERT INTO default.metric_points SELECT * FROM default.metric_points",
    "ALTER TABLE default.metric_points DELETE WHERE 1",
    "CREATE TABLE evil (x Int8) ENGINE = Memory",
    "CREATE VIEW evil AS SELECT 1",
    "DROP TABLE default.runs",
    "DROP DATABASE default",
    "TRUNCATE TABLE default.metric_points",
    "OPTIMIZE TABLE default.metric_summaries FINAL",
    "SYSTEM DROP MARK CACHE",
    "SET readonly = 0",
    "KILL QUERY WHERE 1",
    "GRANT ALL ON *.* TO default",
    "RENAME TABLE default.runs TO default.runs2",
    "DETACH TABLE default.runs",
    "SHOW TABLES",
    "DESCRIBE TABLE default.runs",
    "EXPLAIN SELECT 1",
    "SELECT 1; DROP TABLE default.runs",
    "SELECT 1; SELECT 2",
    "SELECT * FROM default.runs",
    "SELECT * FROM default.metric_points LIMIT 1",
    "SELECT * FROM runs WHERE run_id IN (SELECT run_id FROM default.runs)",
    "SELECT * FROM runs WHERE run_id IN default.runs",
    "SELECT name FROM system.tables",
    "SELECT * FROM system.numbers LIMIT 1",
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    "SELECT * FROM numbers(10)",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT file('/etc/hostname')",
    "SELECT * FROM url('http://127.0.0.1:1/x', 'CSV', 'a String')",
    "SELECT * FROM remote('127.0.0.1', 'default', 'runs')",
    "SELECT * FROM s3('http://127.0.0.1:1/b/x.csv')",
    "SELECT * FROM mysql('127.0.0.1:1', 'db', 't', 'u', 'p')",
    "SELECT * FROM executable('cat /etc/passwd', 'TSV', 'x String')",
    "SELECT * FROM merge('default', '.*')",
    "SELECT * FROM view(SELECT * FROM default.runs)",
    "SELECT * FROM clusterAllReplicas('default', 'default', 'runs')",
    "SELECT dictGet('d', 'x', 1)",
    "SELECT joinGet('default.j', 'x', 1)",
    "SELECT * FROM runs SETTINGS max_execution_time = 1000",
    "SELECT * FROM (SELECT * FROM runs SETTINGS readonly = 0)",
    "SELECT 1 FORMAT CSV",
    "SELECT 1 INTO OUTFILE '/tmp/runstream-analytics-evil.csv'",
    "SELECT * FROM no_such_view",
    "SELECT 'unterminated",
    "",
]


def storage_fingerprint(store: Store, project: str) -> tuple[Any, ...]:
    tables = store.query_rows(
        "SELECT database, name, engine FROM system.tables "
        "WHERE database NOT IN ('system', 'information_schema', 'INFORMATION_SCHEMA') ORDER BY database, name"
    )
    counts = tuple(
        store.query_rows(f"SELECT count() FROM {t} WHERE project IN ({{p:String}}, 'forbidden-x')", {"p": project})[0][0]
        for t in ("runs", "metric_points", "metric_summaries", "table_cells", "run_logs", "run_files", "ingested_events")
    )
    # Only this test's project: the session's pipeline may still be writing other projects.
    return tuple(tables), counts


def test_query_refuses_everything_else(store: Store, client: TestClient, sql_data: Fixture) -> None:
    q(client, "SELECT 1")  # views exist before the fingerprint
    before = storage_fingerprint(store, sql_data.project)
    for sql in FORBIDDEN:
        r = q(client, sql)
        assert 400 <= r.status_code < 500, (sql, r.status_code, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"], sql
    assert storage_fingerprint(store, sql_data.project) == before
    assert not os.path.exists("/tmp/runstream-analytics-evil.csv")
    assert q(client, "SELECT format('{} {}', 'a', 'b') AS `format`, 'DROP TABLE runs; SETTINGS' AS s").json()["rows"] == [
        ["a b", "DROP TABLE runs; SETTINGS"]
    ]


def test_query_project_scope(store: Store, client: TestClient, sql_data: Fixture) -> None:
    other = new_fixture(2, {"mse": 4}, seed=8)
    insert_runs(store, other)
    engine: SqlEngine = client.app.state.sql_engine  # type: ignore[attr-defined]
    scoped = engine.run("SELECT DISTINCT project FROM metric_points ORDER BY project", sql_data.project)
    assert scoped.rows == [[sql_data.project]]
    for view in ("runs", "metric_summaries"):
        assert engine.run(f"SELECT DISTINCT project FROM {view}", other.project).rows == [[other.project]]
    # A scoped query may not name another scope's views, qualified or not.
    for sql in (f"SELECT * FROM {scope_database(None)}.runs", f"SELECT * FROM {scope_database(other.project)}.runs"):
        with pytest.raises(QueryRefused):
            engine.run(sql, sql_data.project)
    unscoped = engine.run(f"SELECT count(DISTINCT project) FROM runs WHERE project IN ('{sql_data.project}', '{other.project}')", None)
    assert unscoped.rows == [[2]]


def test_engine_layers_refuse_without_the_lexer(store: Store, client: TestClient, sql_data: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with the text pre-filter switched off, ClickHouse's parser, analyser and readonly still refuse."""
    import runstream.api.sql_guard as guard

    monkeypatch.setattr(guard, "scan", lambda sql: sql.strip())
    before = storage_fingerprint(store, sql_data.project)
    for sql in FORBIDDEN:
        if not sql.strip():
            continue
        r = q(client, sql)
        assert 400 <= r.status_code < 500, (sql, r.status_code, r.text)
        assert r.json()["detail"], sql
    assert storage_fingerprint(store, sql_data.project) == before
    assert not os.path.exists("/tmp/runstream-analytics-evil.csv")


def test_client_query_helper(client: TestClient, sql_data: Fixture) -> None:
    import pandas as pd

    from runstream.ingest.query import QueryError, query

    sql = f"SELECT run_id, count FROM metric_summaries WHERE project = '{sql_data.project}' AND metric = 'mse' ORDER BY run_id"
    frame = query(sql, client=client)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["run_id", "count"]
    assert frame["run_id"].tolist() == sorted(sql_data.runs)
    assert frame["count"].tolist() == [len(sql_data.runs[r]["mse"][1]) for r in sorted(sql_data.runs)]
    assert query(sql, client=client, format="parquet")["run_id"].tolist() == sorted(sql_data.runs)
    assert query(sql, client=client, format="csv").startswith("run_id,count\n")
    with pytest.raises(QueryError) as info:
        query("DROP TABLE runs", client=client)
    assert info.value.status == 403


def test_query_limits_are_honoured_by_the_engine(store: Store, client: TestClient, sql_data: Fixture) -> None:
    total = sum(len(m[1]) for r in sql_data.runs.values() for m in r.values())
    where = f"WHERE project = '{sql_data.project}'"
    # The result-row cap applies to the result only, not to subqueries.
    r = q(
        client,
        f"SELECT count() FROM (SELECT run_id FROM metric_points {where}) WHERE run_id IN (SELECT run_id FROM metric_points {where})",
        max_rows=1,
    )
    assert r.status_code == 200 and r.json()["rows"] == [[total]] and r.json()["truncated"] is False
    big = new_fixture(3, {"big": 40_000}, seed=9)  # enough rows for several blocks: the read limit is checked per block
    insert_runs(store, big)
    engine = SqlEngine(store, Limits(max_rows_to_read=1000))
    with pytest.raises(QueryRefused) as info:
        engine.run(f"SELECT sum(value) FROM metric_points WHERE project = '{big.project}'", None)
    assert info.value.status == 422 and "rows" in str(info.value).lower()
    engine = SqlEngine(store, Limits(max_memory_bytes=4 * 1024 * 1024))
    with pytest.raises(QueryRefused) as info:
        engine.run(f"SELECT groupArray(run_id), groupArray(toString(value)) FROM metric_points WHERE project = '{big.project}'", None)
    assert info.value.status == 422 and "memory" in str(info.value).lower()
