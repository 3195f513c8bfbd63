"""Client helper for `POST /api/v1/query`: read-only SQL over the documented views.

    from runstream.ingest.query import query
    df = query("SELECT run_id, last FROM metric_summaries WHERE metric = 'loss' ORDER BY last LIMIT 5")

Returns a pandas DataFrame when pandas is installed, else a list of dicts. The
api and key come from RUNSTREAM_API / RUNSTREAM_API_KEY (see runstream.config).
"""

from __future__ import annotations

import io
from typing import Any

import httpx

from runstream.config import Settings
from runstream.errors import ApiError


class QueryError(ApiError):
    """The api refused or failed the query; `status` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}", status)


def query(
    sql: str,
    *,
    settings: Settings | None = None,
    format: str = "json",
    max_rows: int | None = None,
    timeout_s: float | None = None,
    client: httpx.Client | None = None,
) -> Any:
    """Run `sql` on the api. format: json (DataFrame / list of dicts), csv (text) or parquet (DataFrame / pyarrow Table).

    `client`: an httpx.Client whose base_url is the api (e.g. FastAPI's TestClient); default: a request to RUNSTREAM_API.
    """
    cfg = settings or Settings()
    body: dict[str, Any] = {"sql": sql, "format": format}
    if max_rows is not None:
        body["max_rows"] = max_rows
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    headers = {"X-API-Key": cfg.api_key} if cfg.api_key else {}
    # The HTTP timeout leaves room beyond the server's own time limit.
    timeout = (timeout_s or 10.0) + 30.0
    if client is not None:
        response = client.post("/api/v1/query", json=body, headers=headers, timeout=timeout)
    else:
        response = httpx.post(f"{cfg.api.rstrip('/')}/api/v1/query", json=body, headers=headers, timeout=timeout)
    if response.status_code >= 400:
        try:
            message = str(response.json().get("detail", response.text))
        except ValueError:
            message = response.text
        raise QueryError(response.status_code, message)
    if format == "csv":
        return response.text
    if format == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(response.content))
        try:
            return table.to_pandas()
        except ImportError:
            return table
    payload = response.json()
    try:
        import pandas as pd
    except ImportError:
        return [dict(zip(payload["columns"], row, strict=True)) for row in payload["rows"]]
    frame = pd.DataFrame(payload["rows"], columns=payload["columns"])
    frame.attrs["truncated"] = payload["truncated"]
    frame.attrs["types"] = dict(zip(payload["columns"], payload["types"], strict=True))
    return frame
