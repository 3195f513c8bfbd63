"""Read-only user SQL for `POST /api/v1/query`: validation, limits and execution.

Defence in layers, cheapest first (docs/analytics.md lists what is refused):

1. a small lexer (`scan`) that understands strings, quoted identifiers and
   comments refuses multiple statements and the clauses we own or that write
   outside the database (SETTINGS, FORMAT, INTO OUTFILE);
2. ClickHouse parses the query (`EXPLAIN AST`): it must be one SELECT, with
   no table functions, no qualified names outside the scope's view database
   and no function that reads files, dictionaries or server internals;
3. ClickHouse analyses it (`EXPLAIN QUERY TREE`): every table it resolves to
   must be one of the scope's documented views;
4. it runs with readonly=2 (writes refused by the engine), a time limit,
   result-row and read-row limits and a memory cap. readonly=1 would also
   refuse the per-query limits we attach, so readonly=2 is used and the
   user's own SETTINGS clauses are refused by 1 and 2 instead.

User queries run on clients of their own (a chdb handle or HTTP client per
worker thread, whose current database is the view database), never on the
store's reader or writer threads: a slow query cannot stall the api's other
reads or the processor's inserts. `api.sql_gate` admits them: up to
`Limits.concurrency` at once, at most `Limits.project_share` of them one
project's. Each also runs with per-query caps on threads, memory, rows and bytes
read, result rows and bytes, and time (ClickHouse settings; docs/analytics.md).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import decimal
import io
import ipaddress
import math
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from runstream.api.sql_gate import FairGate
from runstream.api.sql_views import ALL_PROJECTS_DB, VIEWS, ViewRegistry
from runstream.errors import BadRequest
from runstream.storage.store import Store

# Functions that reach outside the views: files, dictionaries, Join tables,
# models on disk, server internals and other databases' schemas.
DENIED_FUNCTIONS = {
    "file",
    "catboostevaluate",
    "naivebayesclassifier",
    "hascolumnintable",
    "getmacro",
    "getserversetting",
    "getmergetreesetting",
    "filesystemavailable",
    "filesystemcapacity",
    "filesystemunreserved",
    "demangle",
    "logtrace",
    "getclienthttpheader",
    "input",
}
DENIED_FUNCTION_PREFIXES = ("dict", "joinget", "addressto", "__")
FORBIDDEN_WORDS = {"SETTINGS": "a SETTINGS clause", "INTO": "INTO (OUTFILE)", "OUTFILE": "INTO OUTFILE"}
ALLOWED_SYSTEM_TABLES = {"system.one"}  # what a SELECT without FROM reads
FORMATS = ("json", "csv", "parquet")


class QueryRefused(BadRequest):
    """The query is not allowed; `status` is the HTTP status to answer with (400, or 403
    for what the guard forbids)."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    max_rows: int = 1_000_000  # ceiling for a request's max_rows
    default_rows: int = 10_000
    max_rows_to_read: int = 1_000_000_000
    max_bytes_to_read: int = 64 * 1024**3
    max_memory_bytes: int = 2 * 1024**3
    max_result_bytes: int = 512 * 1024**2
    max_threads: int = 2  # per query: `concurrency` queries use at most concurrency * max_threads cores
    max_sql_chars: int = 100_000
    concurrency: int = 4  # queries running at once, all projects
    project_share: int = 2  # of which one project's at most
    dsn: str | None = None  # a ClickHouse user of their own for user SQL (a read-only profile); default the store's


# --- layer 1: lexer ----------------------------------------------------------
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEREDOC = re.compile(r"\$([A-Za-z0-9_]*)\$")


def _skip_quoted(sql: str, i: int, quote: str) -> int:
    """Index after the literal opening at i (backslash escapes and doubled quotes)."""
    j = i + 1
    while j < len(sql):
        c = sql[j]
        if c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < len(sql) and sql[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    raise QueryRefused("unterminated string or quoted identifier")


def scan(sql: str) -> str:
    """Check the text outside literals and comments; return the SQL without a trailing ';'."""
    sql = sql.strip()
    while sql.endswith(";"):
        sql = sql[:-1].rstrip()
    if not sql:
        raise QueryRefused("empty query")
    words: list[tuple[str, int]] = []
    i = 0
    while i < len(sql):
        c = sql[i]
        if c in "'\"`":
            i = _skip_quoted(sql, i, c)
        elif sql.startswith("--", i) or c == "#":
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while depth:
                if i >= len(sql):
                    raise QueryRefused("unterminated comment")
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "$":
            m = _HEREDOC.match(sql, i)
            end = sql.find(m.group(0), m.end()) if m else -1
            if not m or end < 0:
                raise QueryRefused("unexpected '$'")
            i = end + len(m.group(0))
        elif c == ";":
            raise QueryRefused("only one statement is allowed")
        elif c == "{":
            raise QueryRefused("query parameters ({name:Type}) are not supported")
        else:
            m = _WORD.match(sql, i)
            if m:
                words.append((m.group(0).upper(), m.end()))
                i = m.end()
            else:
                i += 1
    if not words or words[0][0] not in ("SELECT", "WITH") and not sql.startswith("("):
        raise QueryRefused("only SELECT queries are allowed", 403)
    for word, end in words:
        if word in FORBIDDEN_WORDS:
            raise QueryRefused(f"{FORBIDDEN_WORDS[word]} is not allowed; limits and output format are set by the api", 403)
        # FORMAT the clause, not format() the function.
        if word == "FORMAT" and not sql[end:].lstrip().startswith("("):
            raise QueryRefused("a FORMAT clause is not allowed; choose the output with the request's `format`", 403)
    return sql


# --- layers 2 and 3: ClickHouse's own parser and analyser ---------------------
_LINE = re.compile(r"^( *)(\S+)(?: (.*))?$")


def _function_denied(name: str) -> bool:
    low = name.lower()
    return low in DENIED_FUNCTIONS or low.startswith(DENIED_FUNCTION_PREFIXES)


def check_ast(lines: list[str], scope_db: str, storage_db: str, embedded: bool = True) -> None:
    """Refuse from `EXPLAIN AST` output (one node per line, indented by depth).

    The two engines differ in what they parse: the embedded engine's client sends the
    query's settings as a SETTINGS clause and appends FORMAT Native, so its AST has one
    `Set` node and a top-level `Identifier Native` of the client's own; the server's
    HTTP interface takes settings and format out of band (`SqlEngine._explain`), so
    there (`embedded=False`) the AST is the user's query alone and neither may appear.
    """
    if not lines or not lines[0].startswith(("SelectWithUnionQuery", "SelectIntersectExceptQuery")):
        kind = lines[0].split()[0] if lines else "nothing"
        raise QueryRefused(f"only SELECT queries are allowed (got {kind})", 403)
    settings_nodes = 0
    foreign = {"system", "information_schema", storage_db.lower()}
    parsed = [m for m in (_LINE.match(line) for line in lines) if m]
    for k, m in enumerate(parsed):
        depth, node, rest = len(m.group(1)), m.group(2), (m.group(3) or "")
        name = rest.split(" (", 1)[0].strip()
        if node == "Set":
            settings_nodes += 1
        elif node == "TableExpression" and k + 1 < len(parsed) and parsed[k + 1].group(2) == "Function":
            fn = (parsed[k + 1].group(3) or "").split(" ", 1)[0]
            raise QueryRefused(f"table function {fn}() is not allowed; query the documented views", 403)
        elif node == "Function" and _function_denied(name.split(" ", 1)[0]):
            raise QueryRefused(f"function {name.split(' ', 1)[0]}() is not allowed", 403)
        elif node in ("TableIdentifier", "Identifier") and "." in name:
            db, table = name.split(".", 1)
            low = db.strip('`"').lower()
            if low == scope_db.lower():
                if node == "TableIdentifier" and table not in VIEWS:
                    raise QueryRefused(f"unknown view {table!r}; the views are {', '.join(VIEWS)}", 403)
            elif node == "TableIdentifier" or low in foreign or low.startswith(ALL_PROJECTS_DB):
                raise QueryRefused(f"{name!r} is not one of the documented views ({', '.join(VIEWS)})", 403)
        elif depth == 1 and node not in ("ExpressionList", "Set") and not (embedded and node == "Identifier" and name == "Native"):
            # A top-level Literal is INTO OUTFILE, an extra Identifier a FORMAT.
            raise QueryRefused("only a plain SELECT is allowed (no INTO OUTFILE / FORMAT)", 403)
    if settings_nodes > (1 if embedded else 0):
        raise QueryRefused("a SETTINGS clause is not allowed", 403)


_TABLE = re.compile(r"^\s*TABLE id: \d+.*?\btable_name: (\S+)")
_TABLE_FUNCTION = re.compile(r"^\s*TABLE_FUNCTION id: \d+.*?\btable_function_name: (\S+)")
_FUNCTION = re.compile(r"^\s*FUNCTION id: \d+, function_name: ([^,\s]+)")


def check_query_tree(lines: list[str], scope_db: str) -> None:
    """Refuse unless every table the analyser resolved is one of the scope's views.

    Both engines' shapes pass: the embedded one adds a `SETTINGS readonly=2` line of the
    client's settings, which no pattern here matches."""
    allowed = {f"{scope_db}.{v}" for v in VIEWS} | ALLOWED_SYSTEM_TABLES
    for line in lines:
        if m := _TABLE_FUNCTION.match(line):
            raise QueryRefused(f"table function {m.group(1)}() is not allowed; query the documented views", 403)
        if (m := _TABLE.match(line)) and m.group(1) not in allowed:
            raise QueryRefused(f"table {m.group(1)!r} is not one of the documented views ({', '.join(VIEWS)})", 403)
        if (m := _FUNCTION.match(line)) and _function_denied(m.group(1)):
            raise QueryRefused(f"function {m.group(1)}() is not allowed", 403)


# --- errors ----------------------------------------------------------------------
_CODE = re.compile(r"Code: (\d+)\.")
# ClickHouse error codes -> HTTP status: limits hit are the caller's to fix.
STATUS_BY_CODE = {159: 408, 158: 422, 307: 422, 241: 422, 396: 422, 164: 403, 497: 403}


def _clickhouse_error(exc: Exception) -> QueryRefused:
    text = str(exc)
    codes = _CODE.findall(text)
    code = int(codes[-1]) if codes else 0
    message = text.split("DB::Exception:")[-1].strip() if "DB::Exception:" in text else text.strip()
    message = re.sub(r"\s*\(version [^)]*\)\.?", "", message).strip()
    # The limits we attach are ours to know; keep them out of the echoed query.
    message = re.sub(r"\s+SETTINGS readonly = .*?(?=\. |\.?$)", "", message)
    return QueryRefused(message.splitlines()[0][:1000] if message else "query failed", STATUS_BY_CODE.get(code, 400))


# --- results -------------------------------------------------------------------
def jsonable(x: Any) -> Any:
    """A ClickHouse value as JSON: NaN/inf -> null, dates ISO 8601, maps as objects."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, dt.datetime | dt.date | dt.time):
        return x.isoformat()
    if isinstance(x, decimal.Decimal):
        return float(x)
    if isinstance(x, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(x)
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    if isinstance(x, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set):
        return [jsonable(v) for v in x]
    return str(x)


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float
    body: bytes | None = None  # encoded output for csv / parquet
    row_count: int = -1

    def json(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "types": self.types,
            "rows": self.rows,
            "row_count": self.row_count if self.row_count >= 0 else len(self.rows),
            "truncated": self.truncated,
            "elapsed_ms": round(self.elapsed_ms, 2),
        }


def to_csv(columns: list[str], rows: list[list[Any]]) -> bytes:
    import json

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, dict | list) else v for v in row])
    return out.getvalue().encode()


# --- execution ---------------------------------------------------------------
class SqlEngine:
    """Runs guarded user SQL on a dedicated client and thread."""

    def __init__(self, store: Store, limits: Limits | None = None, gate: FairGate | None = None) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.gate = gate or FairGate(self.limits.concurrency, self.limits.project_share)
        self.views = ViewRegistry()
        self._executor = ThreadPoolExecutor(max_workers=self.limits.concurrency, thread_name_prefix="user-sql")
        self._local = threading.local()
        self._storage_db: str | None = None

    def client(self) -> Client:
        # One handle per worker thread: USE (the view database) is per handle, and the
        # api's shared client must keep its storage database.
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            dsn = self.limits.dsn or self.store.dsn
            if self.store.embedded:
                client = clickhouse_connect.get_client(dsn=dsn)
            else:
                client = clickhouse_connect.get_client(dsn=dsn, autogenerate_session_id=False)
            if self._storage_db is None:
                # The DSN's database, before any client is pointed at a view database.
                self._storage_db = str(client.query("SELECT currentDatabase()").result_rows[0][0])
            self._local.client = client
        return client

    def storage_db(self) -> str:
        if self._storage_db is None:
            self.client()
        assert self._storage_db is not None
        return self._storage_db

    def settings(self, timeout_s: float, max_rows: int) -> dict[str, Any]:
        lim = self.limits
        return {
            "readonly": 2,
            "max_execution_time": max(0.001, timeout_s),
            "timeout_overflow_mode": "throw",
            # +1 so that a cut result is detectable; 'break' may overshoot by a block, sliced afterwards.
            "max_result_rows": max_rows + 1,
            "result_overflow_mode": "break",
            "max_result_bytes": lim.max_result_bytes,
            "max_rows_to_read": lim.max_rows_to_read,
            "max_bytes_to_read": lim.max_bytes_to_read,
            "read_overflow_mode": "throw",
            "max_memory_usage": lim.max_memory_bytes,
            "max_threads": lim.max_threads,
            "allow_introspection_functions": 0,
        }

    def _explain(self, kind: str, sql: str, settings: dict[str, Any]) -> list[str]:
        try:
            if self.store.embedded:
                rows = self.client().query(f"EXPLAIN {kind} {sql}", settings=settings).result_rows
                return [str(r[0]) for r in rows]
            # Over HTTP, query() appends FORMAT Native, which `EXPLAIN AST` parses as part of the
            # explained query (its output then comes back as text the client cannot read). No
            # FORMAT in the text: the server's default format, set per request, gives the lines.
            raw = self.client().raw_query(f"EXPLAIN {kind} {sql}", settings={**settings, "default_format": "TabSeparatedRaw"})
        except Exception as exc:
            raise _clickhouse_error(exc) from None
        return raw.decode("utf-8", "replace").splitlines()

    def run(self, sql: str, project: str | None, fmt: str = "json", max_rows: int | None = None, timeout_s: float | None = None) -> QueryResult:
        """Validate and run `sql` in `project`'s scope (None = all projects). Blocking; see `arun`."""
        lim = self.limits
        if fmt not in FORMATS:
            raise QueryRefused(f"format must be one of {', '.join(FORMATS)}")
        if len(sql) > lim.max_sql_chars:
            raise QueryRefused(f"query longer than {lim.max_sql_chars} characters", 413)
        rows_cap = lim.default_rows if max_rows is None else max_rows
        if not 1 <= rows_cap <= lim.max_rows:
            raise QueryRefused(f"max_rows must be between 1 and {lim.max_rows}")
        timeout = lim.timeout_s if timeout_s is None else min(float(timeout_s), lim.timeout_s)
        sql = scan(sql)
        # One client per worker thread: the client, and its current database, are this thread's alone.
        client = self.client()
        # DDL through the store's client: this client's session ends up readonly (the
        # chdb backend cannot restore `readonly` after a SET-applied query).
        db = self.views.ensure(self.store, self.storage_db(), project)
        client.database = db
        settings = self.settings(timeout, rows_cap)
        started = time.perf_counter()
        check_ast(self._explain("AST", sql, {"readonly": 2}), db, self.storage_db(), embedded=self.store.embedded)
        check_query_tree(self._explain("QUERY TREE", sql, settings), db)
        remaining = timeout - (time.perf_counter() - started)
        if remaining <= 0:
            raise QueryRefused(f"time limit of {timeout:g} s exceeded while analysing the query", 408)
        settings["max_execution_time"] = remaining
        try:
            if fmt == "parquet":
                return self._run_parquet(client, sql, settings, rows_cap, started)
            result = client.query(sql, settings=settings)
        except QueryRefused:
            raise
        except Exception as exc:
            raise _clickhouse_error(exc) from None
        columns = list(result.column_names)
        types = [t.name for t in result.column_types]
        all_rows = result.result_rows
        rows = [[jsonable(v) for v in row] for row in all_rows[:rows_cap]]
        # A server reports the result's bytes; a result it cut at max_result_bytes is marked
        # truncated too (the embedded engine reports no size: there only the row cap is seen).
        cut_by_bytes = int(result.summary.get("result_bytes", 0) or 0) >= lim.max_result_bytes
        out = QueryResult(columns, types, rows, len(all_rows) > rows_cap or cut_by_bytes, (time.perf_counter() - started) * 1000)
        if fmt == "csv":
            out.body = to_csv(columns, rows)
        return out

    def _run_parquet(self, client: Client, sql: str, settings: dict[str, Any], rows_cap: int, started: float) -> QueryResult:
        import pyarrow.parquet as pq

        table = client.query_arrow(sql, settings=settings)
        truncated = table.num_rows > rows_cap
        table = table.slice(0, rows_cap)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        out = QueryResult(table.column_names, [str(t) for t in table.schema.types], [], truncated, (time.perf_counter() - started) * 1000)
        out.body = buf.getvalue()
        out.row_count = table.num_rows
        return out

    async def arun(
        self, sql: str, project: str | None, fmt: str = "json", max_rows: int | None = None, timeout_s: float | None = None
    ) -> QueryResult:
        """`run` on a worker thread once the gate admits it; waiting for a slot may take up to the query's time limit."""
        loop = asyncio.get_running_loop()
        wait = self.limits.timeout_s if timeout_s is None else min(float(timeout_s), self.limits.timeout_s)
        async with self.gate.slot(project, wait_s=wait):
            return await loop.run_in_executor(self._executor, lambda: self._run_or_drop_client(sql, project, fmt, max_rows, timeout_s))

    def _run_or_drop_client(self, *args: Any) -> QueryResult:
        """`run`; after a failure this thread's client is replaced: a query cut off mid-stream
        (time or memory limit) leaves the rest of its answer in an embedded connection."""
        try:
            return self.run(*args)
        except Exception:
            self._local.client = None
            raise
