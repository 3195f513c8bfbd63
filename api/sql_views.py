"""The documented SQL views behind `POST /api/v1/query`, one database per scope.

Users' SQL never sees the storage tables. It runs with its current database set
to a *view database* that holds exactly the documented views:

- `runstream_sql` — every project (the scope of a request whose
  `request.state.project` is None);
- `runstream_sql_p_<sha1(project)[:16]>` — one project only: every view in it
  filters `project = unhex('<hex of the name>')`.

Scoping lives in the view definitions themselves, not in the user's query, so a
later API-key feature only has to set `request.state.project`: a scoped request
can only name tables of its own view database (the guard in `api.sql_guard`
refuses every other table), and those views cannot return another project's
rows. The project name reaches the DDL hex-encoded, so no user text is ever
formatted into SQL.

Views are (re)created with CREATE OR REPLACE once per process and database, so
their definitions follow the code (and the summary merge in `api.queries`).
"""

from __future__ import annotations

import hashlib
import re
import threading

from runstream.api.queries import SUMMARY_SELECT
from runstream.lifecycle import status_sql
from runstream.storage.schema import RUN_FIELDS
from runstream.storage.store import Store

ALL_PROJECTS_DB = "runstream_sql"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# name -> (SELECT list, FROM clause with {src} for the storage database, GROUP BY or "").
# `{where}` is where the scope filter lands; it must come before any GROUP BY.
VIEW_DEFS: dict[str, tuple[str, str, str]] = {
    # The shown status (Crashed derived, runstream.lifecycle), with the threshold of when the view was made.
    "runs": (
        RUN_FIELDS,
        "(SELECT * REPLACE (" + status_sql().replace("{", "{{").replace("}", "}}") + " AS status) FROM {src}.runs FINAL)",
        "",
    ),
    "metric_points": ("project, run_id, metric, step, value, value_str, ts", "{src}.metric_points", ""),
    "metric_summaries": (
        f"project, run_id, metric, {SUMMARY_SELECT}, max(last_ts) AS last_ts",
        "{src}.metric_summaries",
        "GROUP BY project, run_id, metric",
    ),
    "tables": ("project, run_id, table_name, column, row, value, value_str, ts", "{src}.table_cells", ""),
    "logs": ("project, run_id, stream, ts, idx, line", "{src}.run_logs", ""),
    "files": ("project, run_id, path, file_kind AS kind, name, size, content_type, sha256, ts", "{src}.run_files FINAL", ""),
}
VIEWS = tuple(VIEW_DEFS)


def scope_database(project: str | None) -> str:
    """The view database a request scoped to `project` (None = all) reads."""
    if project is None:
        return ALL_PROJECTS_DB
    return f"{ALL_PROJECTS_DB}_p_{hashlib.sha1(project.encode()).hexdigest()[:16]}"


def view_statements(src: str, project: str | None) -> list[str]:
    """DDL creating the scope's database and its views over storage database `src`."""
    if not _IDENT.match(src):
        raise ValueError(f"unexpected storage database name {src!r}")
    db = scope_database(project)
    # hex() output is [0-9A-F]* only, so the literal cannot break out of its quotes.
    where = "" if project is None else f"WHERE project = unhex('{project.encode().hex().upper()}')"
    out = [f"CREATE DATABASE IF NOT EXISTS {db}"]
    for name, (select, source, group) in VIEW_DEFS.items():
        out.append(f"CREATE OR REPLACE VIEW {db}.{name} AS SELECT {select} FROM {source.format(src=src)} {where} {group}".rstrip())
    return out


class ViewRegistry:
    """Creates each scope's views once per process (idempotent DDL, so races are harmless)."""

    def __init__(self) -> None:
        self._done: set[str] = set()
        self._lock = threading.Lock()

    def ensure(self, store: Store, src: str, project: str | None) -> str:
        """Make sure the views of `project`'s scope exist; return their database."""
        db = scope_database(project)
        with self._lock:
            if db in self._done:
                return db
        for statement in view_statements(src, project):
            store.command(statement)
        with self._lock:
            self._done.add(db)
        return db
