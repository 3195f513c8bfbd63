"""The runs list's filter language (api/run_filters.py) without services: parsing, errors, and
SQL in which every key and value is a bound parameter, never text."""

from __future__ import annotations

import re
from typing import Any

import pytest

from runstream.api import run_filters as rf
from runstream.api.run_filters import Condition
from runstream.errors import BadRequest


def test_the_reference_questions_parse() -> None:
    assert rf.parse("metric.mse < 3400") == [Condition("metric", "mse", "last", "<", 3400.0)]
    assert rf.parse("params.alpha >= 0.5") == [Condition("param", "alpha", None, ">=", 0.5)]
    assert rf.parse("metric.mse:min<=3400 AND params.alpha>0.1 && tags.model = ridge") == [
        Condition("metric", "mse", "min", "<=", 3400.0),
        Condition("param", "alpha", None, ">", 0.1),
        Condition("tag", "model", None, "=", "ridge"),
    ]


def test_fields_values_and_quoting() -> None:
    assert rf.parse("status != Failed") == [Condition("column", "status", None, "!=", "Failed")]
    assert rf.parse('tags.note = "two words"') == [Condition("tag", "note", None, "=", "two words")]
    assert rf.parse("tag.seed = '3'") == [Condition("tag", "seed", None, "=", "3")]  # quoted: text
    assert rf.parse("tags.seed = 3") == [Condition("tag", "seed", None, "=", 3.0)]
    assert rf.parse("metric.`Cosine Wave`:max > -1e-3") == [Condition("metric", "Cosine Wave", "max", ">", -0.001)]
    assert rf.parse("params.alpha") == [Condition("param", "alpha", None, None, None)]
    assert rf.parse("name ~ ridge") == [Condition("column", "name", None, "~", "ridge")]
    assert rf.parse("metrics.loss/train == 1") == [Condition("metric", "loss/train", "last", "=", 1.0)]
    assert rf.parse("  ") == []
    assert rf.parse_all(["params.a = 1", "params.b = 2"]) == [
        Condition("param", "a", None, "=", 1.0),
        Condition("param", "b", None, "=", 2.0),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "mse < 3",  # no field prefix
        "metric. < 3",
        "metric.mse < low",  # metrics compare with numbers
        "metric.mse:median < 3",
        "params.alpha >=",
        "params.alpha >= 1 2",
        "and params.a = 1",
        "params.a = 1 and",
        "status",
        "metric.mse ~ 3",
        "params.a = 1; DROP TABLE runs",
        "x" * 3000,
        " and ".join(["params.a = 1"] * 21),
    ],
)
def test_bad_filters_are_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        rf.parse(text)


def _sql(text: str) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    return " AND ".join(rf.to_sql(rf.parse(text), params)), params


def test_user_text_only_ever_reaches_parameters() -> None:
    evil = "x') OR 1=1 --"
    sql, params = _sql(f'params.`{evil}` = "{evil}" and tags.k ~ "{evil}" and name != "{evil}" and metric.`{evil}` > 1')
    assert evil not in sql and "OR 1=1" not in sql
    assert list(params.values()).count(evil) == 5 and params["flt3m"] == evil
    # every placeholder is declared with a type and bound
    for name in re.findall(r"\{(\w+):\w+\}", sql):
        assert name in params


def test_metric_filter_sql_uses_the_summaries() -> None:
    sql, params = _sql("metric.mse < 3400")
    assert "metric_summaries" in sql and "HAVING tupleElement(max(last_state), 2) < {flt0v:Float64}" in sql
    assert params == {"flt0m": "mse", "flt0v": 3400.0}
    sql, params = _sql("metric.mse")
    assert "HAVING" not in sql and params == {"flt0m": "mse"}


def test_param_comparisons_are_numeric_for_numbers() -> None:
    sql, params = _sql("params.alpha >= 0.5")
    assert sql == "toFloat64OrNull(r.params[{flt0k:String}]) >= {flt0v:Float64}" and params == {"flt0k": "alpha", "flt0v": 0.5}
    sql, params = _sql("params.alpha = 0.5")
    assert "toFloat64OrNull" in sql and params["flt0s"] == "0.5"
    sql, params = _sql("params.solver = auto")
    assert sql == "r.params[{flt0k:String}] = {flt0v:String}"
    sql, _ = _sql("params.alpha")
    assert sql == "mapContains(r.params, {flt0k:String})"


def test_order_and_group_keys() -> None:
    params: dict[str, Any] = {}
    assert rf.order_key("params.alpha", params) == ["toFloat64OrNull(r.params[{order_key:String}])", "r.params[{order_key:String}]"]
    assert params == {"order_key": "alpha"}
    assert rf.order_key("created_at", {}) is None
    assert rf.group_key("tag.model", params) == "r.tags[{group_key:String}]" and params["group_key"] == "model"
    assert rf.group_key("experiment", {}) == "r.experiment"
    with pytest.raises(BadRequest):
        rf.group_key("name", {})
