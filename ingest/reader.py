"""Reads through the api (RUNSTREAM_API): metrics, files, run details, output."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from runstream.config import Settings
from runstream.errors import ApiError
from runstream.wire import TERMINAL_STATUSES

if TYPE_CHECKING:
    from runstream.ingest.run import Run


def _client(settings: Settings) -> httpx.Client:
    headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
    return httpx.Client(base_url=settings.api.rstrip("/"), headers=headers, timeout=30.0)


def _get(settings: Settings, path: str, **params: Any) -> Any:
    with _client(settings) as client:
        response = client.get(path, params={k: v for k, v in params.items() if v is not None})
    if response.status_code >= 400:
        raise ApiError(f"GET {path} -> {response.status_code}: {response.text[:300]}", response.status_code)
    return response.json()


def fetch_run_by_id(settings: Settings, run_id: str) -> dict[str, Any]:
    result: dict[str, Any] = _get(settings, f"/api/v1/runs/{quote(run_id, safe='')}")
    return result


def fetch_run(run: Run) -> dict[str, Any]:
    result = fetch_run_by_id(run.settings, run.id)
    run._seen(result)
    return result


def wait_ingested(run: Run, wait: float) -> None:
    """Flush, then wait until the processor has stored every event this handle sent."""
    if run.events_sent == 0 or wait <= 0:
        return
    run.flush(wait)
    deadline = time.monotonic() + wait
    delay = 0.02
    while True:
        try:
            details = fetch_run(run)
            if details.get("events", 0) >= run.events_sent:
                return
        except ApiError:
            pass
        if time.monotonic() >= deadline:
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def fetch_metrics(run: Run, name: str | None = None, wait: float = 30.0) -> dict[str, Any]:
    wait_ingested(run, wait)
    metrics: dict[str, Any] = _get(run.settings, f"/api/v1/runs/{quote(run.id, safe='')}/metrics")
    if name is not None:
        return {name: metrics[name]} if name in metrics else {}
    return metrics


def fetch_file_names(run: Run) -> list[str]:
    wait_ingested(run, 30.0)
    files = _get(run.settings, f"/api/v1/runs/{quote(run.id, safe='')}/files")
    return [f["path"] for f in files]


def fetch_children(run: Run) -> list[dict[str, Any]]:
    wait_ingested(run, 30.0)
    listing = _get(run.settings, "/api/v1/runs", parent=run.id, order_by="created_at", limit=10_000)
    children: list[dict[str, Any]] = listing["runs"]
    return children


def download_file(run: Run, name: str, target: Path) -> None:
    """Stream the run's file `name` into `target` (through a temporary file beside it)."""
    wait_ingested(run, 30.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with _client(run.settings) as client, client.stream("GET", f"/api/v1/runs/{quote(run.id, safe='')}/files/{quote(name)}") as response:
        if response.status_code >= 400:
            response.read()
            raise ApiError(f"download of {name!r} failed: {response.status_code}: {response.text[:300]}", response.status_code)
        with open(part, "wb") as out:
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
    os.replace(part, target)


def wait_for_completion(run: Run, show_output: bool = False, poll: float = 0.5, timeout: float | None = None) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    since = 0.0
    while True:
        try:
            details = fetch_run(run)
        except ApiError as exc:
            if " 404:" not in str(exc):
                raise
            # Not processed yet (a run that was just started): keep waiting.
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run.id} not found after {timeout}s") from None
            time.sleep(poll)
            continue
        if show_output:
            lines = _get(run.settings, f"/api/v1/runs/{quote(run.id, safe='')}/logs", since=since)
            for entry in lines["lines"]:
                stream = sys.stderr if entry["stream"] == "stderr" else sys.stdout
                print(entry["line"], file=stream, flush=True)
            since = lines.get("next_since", since)
        if details["status"] in TERMINAL_STATUSES:
            if show_output:
                lines = _get(run.settings, f"/api/v1/runs/{quote(run.id, safe='')}/logs", since=since)
                for entry in lines["lines"]:
                    print(entry["line"], flush=True)
            return details
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"run {run.id} still {details['status']} after {timeout}s")
        time.sleep(poll)
