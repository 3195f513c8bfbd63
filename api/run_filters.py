"""The runs list's filter language, parsed into conditions and compiled to parameterised SQL.

    metric.mse < 3400          a metric's last value (metric.mse:min, :max, :mean, :first, :count)
    params.alpha >= 0.5        a param, numerically when the value is a number
    tags.model = ridge         a tag; values may be quoted: tags.note = "two words"
    status != Failed           also name, experiment; `~` is "contains", `!~` "does not contain"
    params.alpha               the key is present (a metric: the run logged it)

Conditions are joined with `and` (or `&&`); a name with spaces or operators is quoted with
backticks (metric.`Cosine Wave` > 0). Every key and value is bound as a ClickHouse query
parameter; the only text composed into SQL is the fixed fragments of this module (operators,
statistics and column names from whitelists). Nothing a user types becomes SQL.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from runstream.errors import BadRequest

MAX_CONDITIONS = 20
MAX_FILTER_CHARS = 2000
OPS = {"=": "=", "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "~": "~", "!~": "!~"}
ORDERING = {"<", "<=", ">", ">="}
# A metric's statistics over its summary states (storage schema: metric_summaries).
STAT_SQL = {
    "last": "tupleElement(max(last_state), 2)",
    "first": "tupleElement(min(first_state), 2)",
    "min": "min(min_state)",
    "max": "max(max_state)",
    "mean": "sum(sum_state) / sum(finite_state)",
    "count": "sum(count_state)",
}
RUN_COLUMNS = {"status", "name", "experiment"}
KINDS = {"metric": "metric", "metrics": "metric", "param": "param", "params": "param", "tag": "tag", "tags": "tag"}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>!=|==|<=|>=|!~|=|<|>|~)
      | (?P<and>(?i:and)\b|&&)
      | `(?P<bq>[^`]*)`
      | "(?P<dq>(?:[^"\\]|\\.)*)"
      | '(?P<sq>(?:[^'\\]|\\.)*)'
      | (?P<word>[^\s=!<>~`"']+)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Condition:
    kind: str  # metric | param | tag | column
    key: str  # metric name, param or tag key, or run column
    stat: str | None  # metric statistic
    op: str | None  # None: the key is present
    value: str | float | None  # a number when typed as one, otherwise text

    @property
    def numeric(self) -> bool:
        return isinstance(self.value, float)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise BadRequest(f"filter: cannot read {text[pos:].strip()[:40]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind in ("dq", "sq"):
            out.append(("str", re.sub(r"\\(.)", r"\1", m.group(kind))))
        elif kind == "bq":
            out.append(("name", m.group(kind)))
        else:
            out.append((kind, m.group(kind)))
    return out


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _field(parts: list[tuple[str, str]]) -> tuple[str, str, str | None]:
    """kind, key, stat from the tokens before the operator: `params.alpha`, metric.`a b`:min."""
    if not parts or parts[0][0] not in ("word", "name"):
        raise BadRequest("filter: a condition starts with a field (metric.<name>, params.<key>, tags.<key>, status, name, experiment)")
    head = parts[0][1]
    if parts[0][0] == "word" and head in RUN_COLUMNS and len(parts) == 1:
        return "column", head, None
    prefix, dot, rest = head.partition(".")
    kind = KINDS.get(prefix)
    if parts[0][0] != "word" or kind is None or not dot:
        raise BadRequest(f"filter: unknown field {head!r} (metric.<name>, params.<key>, tags.<key>, status, name, experiment)")
    key = rest
    tail = parts[1:]
    if not key and tail and tail[0][0] == "name":  # metric.`Cosine Wave`
        key = tail[0][1]
        tail = tail[1:]
    stat: str | None = None
    if kind == "metric":
        if tail and tail[0][0] == "word" and tail[0][1].startswith(":"):
            stat = tail[0][1][1:]
            tail = tail[1:]
        elif ":" in key and parts[0][0] == "word" and key == rest:
            key, stat = key.rsplit(":", 1)  # a name with a colon is quoted: metric.`a:b`
        stat = stat or "last"
        if stat not in STAT_SQL:
            raise BadRequest(f"filter: metric statistic must be one of {', '.join(STAT_SQL)} (quote a name with a colon: metric.`a:b`)")
    if tail:
        raise BadRequest(f"filter: unexpected {tail[0][1]!r} after {head!r}")
    if not key:
        raise BadRequest(f"filter: {prefix}. needs a name")
    return kind, key, stat


def parse(text: str) -> list[Condition]:
    """One filter string (conditions joined by `and`) -> conditions; BadRequest on bad input."""
    if len(text) > MAX_FILTER_CHARS:
        raise BadRequest(f"filter: at most {MAX_FILTER_CHARS} characters")
    conditions: list[Condition] = []
    groups: list[list[tuple[str, str]]] = [[]]
    for tok in _tokens(text):
        if tok[0] == "and":
            groups.append([])
        else:
            groups[-1].append(tok)
    if groups == [[]]:
        return []
    for g in groups:
        if not g:
            raise BadRequest("filter: an empty condition around 'and'")
        ops = [i for i, t in enumerate(g) if t[0] == "op"]
        if not ops:
            kind, key, stat = _field(g)
            if kind == "column":
                raise BadRequest(f"filter: {key} needs an operator and a value")
            conditions.append(Condition(kind, key, stat, None, None))
            continue
        i = ops[0]
        kind, key, stat = _field(g[:i])
        rest = g[i + 1 :]
        if len(rest) != 1 or rest[0][0] not in ("word", "str", "name"):
            raise BadRequest(f"filter: {g[i][1]!r} needs one value after it")
        op = OPS[g[i][1]]
        raw_kind, raw = rest[0]
        value: str | float = raw
        if raw_kind == "word" and (n := _number(raw)) is not None:
            value = n
        if kind == "metric" and not isinstance(value, float):
            raise BadRequest(f"filter: metric.{key} compares with a number, not {raw!r}")
        if kind == "metric" and op in ("~", "!~"):
            raise BadRequest("filter: ~ applies to text (params, tags, name, ...)")
        conditions.append(Condition(kind, key, stat, op, value))
    if len(conditions) > MAX_CONDITIONS:
        raise BadRequest(f"filter: at most {MAX_CONDITIONS} conditions")
    return conditions


def parse_all(texts: list[str] | None) -> list[Condition]:
    out: list[Condition] = []
    for t in texts or ():
        out.extend(parse(t))
    if len(out) > MAX_CONDITIONS:
        raise BadRequest(f"filter: at most {MAX_CONDITIONS} conditions")
    return out


def _text_sql(column: str, op: str, value: str, p: str, params: dict[str, Any]) -> str:
    params[p] = value
    if op == "~":
        return f"positionCaseInsensitiveUTF8({column}, {{{p}:String}}) > 0"
    if op == "!~":
        return f"positionCaseInsensitiveUTF8({column}, {{{p}:String}}) = 0"
    return f"{column} {op} {{{p}:String}}"


def to_sql(conditions: list[Condition], params: dict[str, Any], alias: str = "r", prefix: str = "flt") -> list[str]:
    """WHERE fragments over the shown runs table aliased `alias`; values go into `params`."""
    where: list[str] = []
    for i, c in enumerate(conditions):
        p = f"{prefix}{i}"
        if c.kind == "column":
            assert c.op is not None and c.value is not None
            where.append(_text_sql(f"{alias}.{c.key}", c.op, str(c.value) if not c.numeric else _num_text(c), f"{p}v", params))
            continue
        if c.kind == "metric":
            params[f"{p}m"] = c.key
            having = ""
            if c.op is not None:
                params[f"{p}v"] = c.value
                having = f" HAVING {STAT_SQL[c.stat or 'last']} {c.op} {{{p}v:Float64}}"
            where.append(
                f"({alias}.project, {alias}.run_id) IN (SELECT project, run_id FROM metric_summaries "
                f"WHERE metric = {{{p}m:String}} GROUP BY project, run_id{having})"
            )
            continue
        column = f"{alias}.{'params' if c.kind == 'param' else 'tags'}"
        params[f"{p}k"] = c.key
        item = f"{column}[{{{p}k:String}}]"
        if c.op is None:
            where.append(f"mapContains({column}, {{{p}k:String}})")
        elif c.numeric and c.op in ORDERING:
            params[f"{p}v"] = c.value
            where.append(f"toFloat64OrNull({item}) {c.op} {{{p}v:Float64}}")
        elif c.numeric and c.op in ("=", "!="):
            # 0.5 matches a stored "0.5" or "0.50"; the text as typed matches too ("1e-3").
            params[f"{p}v"] = c.value
            params[f"{p}s"] = _num_text(c)
            same = f"(ifNull(toFloat64OrNull({item}) = {{{p}v:Float64}}, 0) OR {item} = {{{p}s:String}})"
            where.append(same if c.op == "=" else f"NOT {same}")
        else:
            where.append(_text_sql(item, c.op, _num_text(c) if c.numeric else str(c.value), f"{p}v", params))
    return where


def _num_text(c: Condition) -> str:
    v = c.value
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(v)


def order_key(key: str, params: dict[str, Any], alias: str = "r") -> list[str] | None:
    """ORDER BY terms for `params.<key>`/`tags.<key>` (numbers by value first, then text), or None."""
    prefix, dot, name = key.partition(".")
    kind = KINDS.get(prefix)
    if not dot or not name or kind not in ("param", "tag"):
        return None
    params["order_key"] = name
    item = f"{alias}.{'params' if kind == 'param' else 'tags'}[{{order_key:String}}]"
    return [f"toFloat64OrNull({item})", item]


def group_key(group_by: str, params: dict[str, Any], alias: str = "r") -> str:
    """The SQL of a group's key: tags.<key>, params.<key> (also tag./param.), experiment or status."""
    if group_by in ("experiment", "status"):
        return f"{alias}.{group_by}"
    prefix, dot, name = group_by.partition(".")
    kind = KINDS.get(prefix)
    if not dot or not name or kind not in ("param", "tag"):
        raise BadRequest("group_by must be tags.<key>, params.<key>, experiment or status")
    params["group_key"] = name
    return f"{alias}.{'params' if kind == 'param' else 'tags'}[{{group_key:String}}]"
