"""MLflow's search grammar, parsed here and translated into parameterised ClickHouse SQL.

    filter   := cond (AND cond)*
    cond     := ident op value
    ident    := entity '.' key          entity: metrics|metric, params|param|parameters,
                                        tags|tag, attributes|attribute|attr|run
                key: a bare name (letters, digits, _ . - / :) or quoted with ` " or '
    op       := = | != | < | <= | > | >= | LIKE | ILIKE | IN | NOT IN | IS NULL | IS NOT NULL
    value    := 'string' | "string" | number | ( 'string' [, 'string']* )

as MLflow accepts them: metrics and the time attributes compare with numbers (= != < <=
> >=); params and tags with strings (= != LIKE ILIKE) or IS [NOT] NULL; string attributes
(run_id, run_name, status, user_id) with = != LIKE ILIKE, run_id also with IN and NOT IN.
    order_by := ident [ASC|DESC]

The only text this module puts into SQL is fixed: column expressions from the tables
below and parameter placeholders `{fN:Type}`. Every key and value a user wrote is bound
as a clickhouse-connect parameter, so no filter can change a statement's shape.
Metric conditions compare a run's latest value (highest step, then time, then value), as
MLflow does; a run without the param, tag or metric never matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from runstream.api.mlflow.protocol import invalid
from runstream.api.mlflow.status import TO_RUNSTREAM

ENTITIES = {
    "metrics": "metric",
    "metric": "metric",
    "params": "param",
    "param": "param",
    "parameters": "param",
    "parameter": "param",
    "tags": "tag",
    "tag": "tag",
    "attributes": "attribute",
    "attribute": "attribute",
    "attr": "attribute",
    "run": "attribute",
}
NUMERIC_OPS = ("=", "!=", "<", "<=", ">", ">=")
STRING_OPS = ("=", "!=", "LIKE", "ILIKE", "IN", "NOT IN")
KEY_VALUE_OPS = ("=", "!=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL")
SQL_OP = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "LIKE": "LIKE", "ILIKE": "ILIKE", "IN": "IN", "NOT IN": "NOT IN"}

# MLflow's status names from the stored status, for filters and ordering on attributes.status.
STATUS_SQL = (
    "multiIf("
    + ", ".join(f"r.status = '{ours}', '{theirs}'" for theirs, ours in TO_RUNSTREAM.items())
    + ", r.status = 'NotStarted', 'SCHEDULED', 'RUNNING')"
)
# attribute -> (SQL expression over the runs row `r`, numeric?)
ATTRIBUTES: dict[str, tuple[str, bool]] = {
    "run_id": ("r.run_id", False),
    "run_uuid": ("r.run_id", False),
    "run_name": ("r.name", False),
    "status": (STATUS_SQL, False),
    "user_id": ("r.tags['mlflow.user']", False),
    "start_time": ("toUnixTimestamp64Milli(r.created_at)", True),
    "created": ("toUnixTimestamp64Milli(r.created_at)", True),
    "end_time": ("toUnixTimestamp64Milli(r.ended_at)", True),
}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
      | (?P<bq>`[^`]*`)
      | (?P<num>[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))(?![\w.])
      | (?P<op><=|>=|!=|<>|==|=|<|>)
      | (?P<punct>[(),.])
      | (?P<word>[A-Za-z_][\w\-/:]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # str, bq, num, op, punct, word
    text: str


@dataclass(frozen=True)
class Condition:
    entity: str  # metric | param | tag | attribute
    key: str
    op: str
    value: Any  # float for numeric comparisons, str, or tuple[str, ...] for IN


@dataclass(frozen=True)
class OrderKey:
    entity: str
    key: str
    ascending: bool


def _unquote(text: str) -> str:
    quote = text[0]
    body = text[1:-1]
    if quote == "`":
        return body
    return re.sub(r"\\(.)", r"\1", body.replace(quote * 2, quote))


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise invalid(f"Invalid search expression {text!r}: cannot parse at {text[pos : pos + 20]!r}.")
        kind = m.lastgroup or ""
        tokens.append(Token(kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def error(self, what: str) -> Exception:
        return invalid(f"Invalid search expression {self.text!r}: {what}.")

    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise self.error("unexpected end")
        self.i += 1
        return tok

    def word(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text.upper() in words

    def identifier(self) -> tuple[str, str]:
        tok = self.take()
        if tok.kind == "bq":  # `metrics.x` written as one quoted identifier
            entity, dot, key = _unquote(tok.text).partition(".")
            if not dot:
                raise self.error(f"expected entity.key, got {tok.text}")
        elif tok.kind == "word":
            entity = tok.text
            if not (self.peek() and self.peek().text == "."):  # type: ignore[union-attr]
                raise self.error(f"expected '.' after {tok.text!r} (e.g. metrics.rmse, params.alpha, tags.team, attributes.status)")
            self.take()
            key = self._key()
        else:
            raise self.error(f"expected an identifier, got {tok.text!r}")
        kind = ENTITIES.get(entity.lower())
        if kind is None:
            raise self.error(f"invalid entity type {entity!r}; expected metrics, params, tags or attributes")
        if not key:
            raise self.error("empty key")
        if kind == "attribute" and key not in ATTRIBUTES:
            raise self.error(f"invalid attribute key {key!r}; expected one of {', '.join(sorted(ATTRIBUTES))}")
        return kind, key

    def _key(self) -> str:
        tok = self.take()
        if tok.kind in ("bq", "str"):
            return _unquote(tok.text)
        if tok.kind not in ("word", "num"):
            raise self.error(f"expected a key, got {tok.text!r}")
        parts = [tok.text]
        while self.peek() is not None and self.peek().text == "." and self.peek(1) is not None and self.peek(1).kind in ("word", "num"):  # type: ignore[union-attr]
            self.take()
            parts.append(self.take().text)
        return ".".join(parts)

    def operator(self) -> str:
        tok = self.take()
        if tok.kind == "op":
            return {"==": "=", "<>": "!="}.get(tok.text, tok.text)
        if tok.kind == "word" and tok.text.upper() in ("LIKE", "ILIKE", "IN"):
            return tok.text.upper()
        if tok.kind == "word" and tok.text.upper() == "NOT" and self.word("IN"):
            self.take()
            return "NOT IN"
        if tok.kind == "word" and tok.text.upper() == "IS":
            negated = self.word("NOT")
            if negated:
                self.take()
            if not self.word("NULL"):
                raise self.error("expected IS NULL or IS NOT NULL")
            self.take()
            return "IS NOT NULL" if negated else "IS NULL"
        raise self.error(f"expected a comparator, got {tok.text!r}")

    def value(self, op: str) -> Any:
        if op in ("IN", "NOT IN"):
            if self.take().text != "(":
                raise self.error(f"{op} takes a parenthesised list of strings")
            items: list[str] = []
            while True:
                tok = self.take()
                if tok.kind != "str":
                    raise self.error(f"{op} takes strings, got {tok.text!r}")
                items.append(_unquote(tok.text))
                sep = self.take().text
                if sep == ")":
                    return tuple(items)
                if sep != ",":
                    raise self.error(f"expected ',' or ')' in the {op} list")
        tok = self.take()
        if tok.kind == "str":
            return _unquote(tok.text)
        if tok.kind == "num":
            return float(tok.text)
        raise self.error(f"expected a value, got {tok.text!r}")

    def condition(self) -> Condition:
        entity, key = self.identifier()
        op = self.operator()
        value = None if op in ("IS NULL", "IS NOT NULL") else self.value(op)
        numeric = entity == "metric" or (entity == "attribute" and ATTRIBUTES[key][1])
        if numeric:
            if op not in NUMERIC_OPS:
                raise self.error(f"{op} does not apply to {entity} {key!r}; use one of {', '.join(NUMERIC_OPS)}")
            if not isinstance(value, float):
                raise self.error(f"{entity} {key!r} compares with a number, got {value!r}")
        else:
            allowed = KEY_VALUE_OPS[:4] if entity == "attribute" else KEY_VALUE_OPS
            if entity == "attribute" and key in ("run_id", "run_uuid"):
                allowed = STRING_OPS
            if op not in allowed:
                raise self.error(f"{op} does not apply to {entity} {key!r}; use one of {', '.join(allowed)}")
            if isinstance(value, float):
                raise self.error(f"{entity} {key!r} compares with a quoted string, got {value!r}")
        return Condition(entity, key, op, value)


def parse_filter(text: str | None) -> list[Condition]:
    """The conditions of a filter string (joined by AND); an empty filter has none."""
    if text is None or not text.strip():
        return []
    parser = _Parser(text)
    conditions = [parser.condition()]
    while parser.peek() is not None:
        if not parser.word("AND"):
            raise parser.error(f"expected AND, got {parser.peek().text!r} (OR is not supported, as in MLflow)")  # type: ignore[union-attr]
        parser.take()
        conditions.append(parser.condition())
    return conditions


def parse_order_by(items: list[str] | None) -> list[OrderKey]:
    keys: list[OrderKey] = []
    for item in items or []:
        parser = _Parser(item)
        entity, key = parser.identifier()
        ascending = True
        if parser.word("ASC", "DESC"):
            ascending = parser.take().text.upper() == "ASC"
        if parser.peek() is not None:
            raise parser.error("expected ASC or DESC at the end")
        keys.append(OrderKey(entity, key, ascending))
    return keys


class Params:
    """Names the bound parameters of one statement: f0, f1, ..."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.n = 0

    def bind(self, value: Any, type_: str) -> str:
        name = f"f{self.n}"
        self.n += 1
        self.params[name] = value
        return f"{{{name}:{type_}}}"


# The latest value of one metric per run of the project: MLflow's latest_metrics.
LATEST_METRIC = (
    "SELECT run_id, tupleElement(argMax((value, step), (step, ts, value)), 1) AS v FROM metric_points "
    "WHERE project = {{project:String}} AND metric = {key} GROUP BY run_id"
)


def _compare(expr: str, op: str, value: Any, p: Params, type_: str) -> str:
    if op in ("IN", "NOT IN"):
        return f"{expr} {SQL_OP[op]} {p.bind(list(value), 'Array(String)')}"
    if op in ("LIKE", "ILIKE"):
        return f"{expr} {SQL_OP[op]} {p.bind(value, 'String')}"
    return f"{expr} {SQL_OP[op]} {p.bind(value, type_)}"


def condition_sql(cond: Condition, p: Params, deleted_tag: str) -> str:
    """One condition as a boolean SQL expression over the runs row `r`."""
    if cond.entity == "metric":
        latest = LATEST_METRIC.format(key=p.bind(cond.key, "String"))
        return f"r.run_id IN (SELECT run_id FROM ({latest}) WHERE {_compare('v', cond.op, cond.value, p, 'Float64')})"
    if cond.entity in ("param", "tag"):
        column = "r.params" if cond.entity == "param" else "r.tags"
        key = p.bind(cond.key, "String")
        present = f"mapContains({column}, {key})"
        if cond.entity == "tag":
            present += f" AND {column}[{key}] != {p.bind(deleted_tag, 'String')}"
        if cond.op == "IS NULL":
            return f"NOT ({present})"
        if cond.op == "IS NOT NULL":
            return f"({present})"
        return f"({present} AND {_compare(f'{column}[{key}]', cond.op, cond.value, p, 'String')})"
    expr, numeric = ATTRIBUTES[cond.key]
    if numeric:
        return f"ifNull({_compare(expr, cond.op, int(cond.value), p, 'Int64')}, 0)"
    return _compare(expr, cond.op, cond.value, p, "String")


def order_sql(keys: list[OrderKey], p: Params, deleted_tag: str) -> tuple[list[str], list[str]]:
    """(LEFT JOINs, ORDER BY terms) for MLflow's order: missing values last (NaN metrics just
    before them), then start_time descending and run id, as MLflow's SQL store orders."""
    joins: list[str] = []
    terms: list[str] = []
    for i, key in enumerate(keys):
        direction = "ASC" if key.ascending else "DESC"
        if key.entity == "metric":
            alias = f"o{i}"
            latest = LATEST_METRIC.format(key=p.bind(key.key, "String"))
            joins.append(f"LEFT JOIN ({latest}) AS {alias} ON {alias}.run_id = r.run_id")
            terms += [f"multiIf({alias}.v IS NULL, 2, isNaN({alias}.v), 1, 0) ASC", f"{alias}.v {direction}"]
        elif key.entity in ("param", "tag"):
            column = "r.params" if key.entity == "param" else "r.tags"
            name = p.bind(key.key, "String")
            missing = f"NOT mapContains({column}, {name})"
            if key.entity == "tag":
                missing += f" OR {column}[{name}] = {p.bind(deleted_tag, 'String')}"
            terms += [f"({missing}) ASC", f"{column}[{name}] {direction}"]
        else:
            expr, _ = ATTRIBUTES[key.key]
            terms += [f"isNull({expr}) ASC", f"{expr} {direction}"]
    if not any(k.entity == "attribute" and k.key in ("start_time", "created") for k in keys):
        terms.append("r.created_at DESC")
    terms.append("r.run_id ASC")
    return joins, terms
