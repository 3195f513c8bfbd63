"""MLflow's search grammar -> parameterised SQL (api/mlflow/filters.py); no services needed."""

from __future__ import annotations

import re

import pytest

from runstream.api.mlflow.filters import Condition, OrderKey, Params, condition_sql, order_sql, parse_filter, parse_order_by
from runstream.api.mlflow.protocol import MlflowError
from runstream.api.mlflow.status import to_mlflow, to_runstream

DELETED = "\x00deleted"


def test_conditions_of_every_entity_and_operator() -> None:
    text = (
        'metrics.rmse < 0.5 AND metric.`val loss` >= -1e-3 AND params.alpha = \'0.1\' AND param."my param" != "x" '
        "AND tags.mlflow.runName LIKE 'r%' AND tag.team ILIKE '%Vision%' AND attributes.status = 'FINISHED' "
        "AND attribute.run_id IN ('a', 'b') AND attr.run_id NOT IN ('c') AND run.start_time > 1700000000000 "
        "AND params.missing IS NULL AND tags.t IS NOT NULL AND `metrics.acc` = 1"
    )
    assert parse_filter(text) == [
        Condition("metric", "rmse", "<", 0.5),
        Condition("metric", "val loss", ">=", -0.001),
        Condition("param", "alpha", "=", "0.1"),
        Condition("param", "my param", "!=", "x"),
        Condition("tag", "mlflow.runName", "LIKE", "r%"),
        Condition("tag", "team", "ILIKE", "%Vision%"),
        Condition("attribute", "status", "=", "FINISHED"),
        Condition("attribute", "run_id", "IN", ("a", "b")),
        Condition("attribute", "run_id", "NOT IN", ("c",)),
        Condition("attribute", "start_time", ">", 1700000000000.0),
        Condition("param", "missing", "IS NULL", None),
        Condition("tag", "t", "IS NOT NULL", None),
        Condition("metric", "acc", "=", 1.0),
    ]
    assert parse_filter("") == [] and parse_filter(None) == [] and parse_filter("   ") == []
    assert parse_filter("params.q = 'it''s'") == [Condition("param", "q", "=", "it's")]
    assert parse_filter("params.a = 'x' and params.b = 'y'")[1] == Condition("param", "b", "=", "y")


@pytest.mark.parametrize(
    "text",
    [
        "metrics.rmse",  # no comparator
        "metrics.rmse < 'a'",  # a metric compares with a number
        "params.alpha = 0.1",  # a param with a quoted string
        "params.alpha < '1'",  # no order comparison on strings
        "params.alpha IN ('1')",  # IN only on run_id, as in MLflow
        "attributes.run_name IN ('a')",
        "attributes.nope = 'x'",  # unknown attribute
        "foo.bar = 'x'",  # unknown entity
        "rmse < 1",  # no entity
        "metrics.a < 1 OR metrics.b < 1",  # no OR, as in MLflow
        "metrics.a < 1 AND",  # dangling AND
        "params.a = 'unterminated",
        "metrics.a ~ 1",
        "params.a IS 'x'",
    ],
)
def test_what_mlflow_refuses_is_invalid_parameter_value(text: str) -> None:
    with pytest.raises(MlflowError) as err:
        parse_filter(text)
    assert err.value.code == "INVALID_PARAMETER_VALUE" and err.value.status == 400


def test_order_by() -> None:
    assert parse_order_by(["metrics.rmse DESC", "params.alpha", "attributes.start_time asc", "tags.`a b` DESC"]) == [
        OrderKey("metric", "rmse", False),
        OrderKey("param", "alpha", True),
        OrderKey("attribute", "start_time", True),
        OrderKey("tag", "a b", False),
    ]
    for bad in (["metrics.rmse SIDEWAYS"], ["rmse"], ["metrics.rmse DESC extra"]):
        with pytest.raises(MlflowError):
            parse_order_by(bad)


HOSTILE = [
    "x'; DROP TABLE runs; --",
    "a} OR 1=1 {b",
    "{project:String}",
    "`) UNION SELECT * FROM system.users --",
    "\\' OR '1'='1",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_no_user_text_reaches_the_sql(value: str) -> None:
    quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    texts = [
        f"params.alpha = {quoted}",
        f"tags.team LIKE {quoted}",
        f"attributes.run_id IN ({quoted}, 'b')",
        f"params.`{value.replace('`', '')}` = 'x'",
        f'metrics."{value.replace(chr(34), "")}" > 1',
    ]
    for text in texts:
        params: dict[str, object] = {}
        p = Params(params)
        sql = " AND ".join(condition_sql(c, p, DELETED) for c in parse_filter(text))
        joins, terms = order_sql(parse_order_by([f"params.`{value.replace('`', '')}` DESC", "metrics.`x` ASC"]), p, DELETED)
        statement = sql + " ".join(joins) + ", ".join(terms)
        # every value is a bound parameter: the statement holds none of the user's text
        bound = [v for v in params.values() if isinstance(v, str)] + [i for v in params.values() if isinstance(v, list) for i in v]
        assert any(value.replace("`", "").replace('"', "") in b or value in b for b in bound)
        for fragment in ("DROP", "UNION", "1=1", "system.users"):
            assert fragment not in statement
        assert set(re.findall(r"\{(\w+):", statement)) <= set(params) | {"project"}


def test_sql_shapes() -> None:
    params: dict[str, object] = {}
    p = Params(params)
    sql = [condition_sql(c, p, DELETED) for c in parse_filter("metrics.rmse <= 0.5 AND params.a != 'x' AND attributes.end_time < 5")]
    assert "argMax((value, step), (step, ts, value))" in sql[0] and "v <= {f1:Float64}" in sql[0]
    assert sql[1] == "(mapContains(r.params, {f2:String}) AND r.params[{f2:String}] != {f3:String})"
    assert sql[2] == "ifNull(toUnixTimestamp64Milli(r.ended_at) < {f4:Int64}, 0)"
    assert params == {"f0": "rmse", "f1": 0.5, "f2": "a", "f3": "x", "f4": 5}
    joins, terms = order_sql([OrderKey("metric", "rmse", False)], p, DELETED)
    assert len(joins) == 1 and terms[0].startswith("multiIf(o0.v IS NULL, 2, isNaN(o0.v), 1, 0)")
    assert terms[-2:] == ["r.created_at DESC", "r.run_id ASC"]
    _, terms = order_sql([OrderKey("attribute", "start_time", True)], p, DELETED)
    assert "r.created_at DESC" not in terms


def test_statuses_map_both_ways() -> None:
    pairs = {"RUNNING": "Running", "SCHEDULED": "Queued", "FINISHED": "Completed", "FAILED": "Failed", "KILLED": "Canceled"}
    for theirs, ours in pairs.items():
        assert to_runstream(theirs) == ours and to_mlflow(ours) == theirs
    assert to_runstream(3) == "Completed" and to_runstream("finished") == "Completed"
    assert to_mlflow("NotStarted") == "SCHEDULED"
    with pytest.raises(MlflowError):
        to_runstream("DONE")
