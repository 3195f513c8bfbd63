"""Files and images of runs: on local disk at once, uploaded in the background.

`upload_file` and `log_image` never touch the network in the caller's thread
(SPEC: Client): `Uploads.add` copies the bytes into a spool folder
`$RUNSTREAM_HOME/artifact-spool/<pid>-<token>/` (`<n>.bin` and a `<n>.json`
naming project, run, path and kind) and returns. One thread per process
uploads them in order, streaming each file from disk in chunks (the api
streams it to disk too), retrying while the api is away or failing (connect
errors, timeouts, 5xx, 429: backoff up to `MAX_BACKOFF_S`); only when the
upload is stored does the run get its `file` event, so a listed file can
always be downloaded. A 4xx answer other than 429 (a bad path, a file over
the api's limit, a key without access) will not change by retrying: the file
is dropped with one warning.

`flush(timeout)` waits for every file added so far (Run.flush calls it before
flushing the events). At exit the uploader keeps trying for
RUNSTREAM_EXIT_FLUSH_TIMEOUT seconds; what is left stays in its folder, and
the next process's uploader adopts the folders of dead owners and uploads
them, with their `file` events.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote

import httpx

from runstream.config import Settings
from runstream.ingest.spool import _alive

log = logging.getLogger("runstream.client")

CHUNK = 1 << 20
MAX_BACKOFF_S = 5.0
RETRY_STATUSES = (408, 425, 429)


class FileSink(Protocol):
    """Where a stored file's `file` event goes: the run's buffer (or a stand-in for it)."""

    def enqueue(self, kind: str, payload: dict[str, Any], *, last: bool = False) -> None: ...


@dataclass
class Item:
    """One spooled file."""

    data: Path  # the bytes, in the spool
    meta: Path  # its description, beside it
    project: str
    run_id: str
    path: str
    file_kind: str
    name: str
    sink: FileSink | None  # None for an adopted file: a buffer is made for its event


class Refused(Exception):
    """The api refused the file for good (a 4xx that retrying will not change)."""


def put_stream(client: httpx.Client, item: Item) -> dict[str, Any]:
    """PUT the item's bytes, streamed from disk; the api's description of the stored file."""
    size = item.data.stat().st_size

    def chunks() -> Iterator[bytes]:
        with open(item.data, "rb") as f:
            while block := f.read(CHUNK):
                yield block

    response = client.put(
        f"/api/v1/runs/{quote(item.run_id, safe='')}/files/{quote(item.path)}",
        content=chunks(),
        params={"project": item.project},
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
    )
    if response.status_code >= 500 or response.status_code in RETRY_STATUSES:
        raise httpx.HTTPStatusError(f"{response.status_code}", request=response.request, response=response)
    if response.status_code >= 400:
        raise Refused(f"{response.status_code}: {response.text[:300]}")
    result: dict[str, Any] = response.json()
    return result


class Uploads:
    """The process's artifact spool and its upload thread.

    client_factory: the HTTP client the thread uploads with (base url = the api);
    sink_factory: a sink for the events of adopted files (run id, project) -> FileSink;
    flush_events: waits for the events enqueued so far (the shipper's flush)."""

    def __init__(
        self,
        settings: Settings,
        *,
        sink_factory: Callable[[str, str], FileSink],
        flush_events: Callable[[float | None], bool],
        client_factory: Callable[[], httpx.Client] | None = None,
    ) -> None:
        self.settings = settings
        self.root = settings.home / "artifact-spool"
        self.dir = self.root / f"{os.getpid()}-{secrets.token_hex(4)}"
        self._sink_factory = sink_factory
        self._flush_events = flush_events
        headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
        self._client_factory = client_factory or (
            lambda: httpx.Client(base_url=settings.api.rstrip("/"), headers=headers, timeout=httpx.Timeout(30.0, connect=5.0))
        )
        self._cond = threading.Condition()
        self._queue: deque[Item] = deque()
        self._busy = 0  # items taken by the thread and not yet done
        self._counter = 0
        self._closed = False
        self._warned_down = False
        self.uploaded = 0
        self.failed_attempts = 0
        self.refused = 0
        self._held: list[FileSink] = []  # sinks of adopted files, until their events are shipped
        self._thread = threading.Thread(target=self._loop, name="runstream-uploads", daemon=True)
        self._adopt()
        self._thread.start()
        atexit.register(self._at_exit)

    # --- the caller's thread ---
    def add(
        self,
        project: str,
        run_id: str,
        path: str,
        source: str | os.PathLike[str] | IO[bytes] | bytes,
        sink: FileSink,
        *,
        file_kind: str = "file",
        name: str = "",
    ) -> None:
        """Spool the bytes of `source` (a path, a binary stream or bytes) for upload; local disk only."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "owner").write_text(str(os.getpid()))
        with self._cond:
            self._counter += 1
            n = self._counter
        data, meta = self.dir / f"{n:09d}.bin", self.dir / f"{n:09d}.json"
        part = data.with_suffix(".part")
        if isinstance(source, (bytes, bytearray, memoryview)):
            part.write_bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            shutil.copyfile(source, part)
        else:
            with open(part, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
        os.replace(part, data)
        meta.write_text(json.dumps({"project": project, "run": run_id, "path": path, "file_kind": file_kind, "name": name}))
        with self._cond:
            self._queue.append(Item(data, meta, project, run_id, path, file_kind, name, sink))
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._busy

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every file added so far is uploaded (or refused); False on timeout."""
        with self._cond:
            done = self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)
        if not done:
            log.warning("runstream: %d file(s) not uploaded after %ss; they stay in %s and are retried", self.pending, timeout, self.dir)
        return done

    def close(self, timeout: float | None = 30.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _at_exit(self) -> None:
        # Flush, but leave the thread running: a submitted script's supervisor (ingest/compute.py)
        # may still upload its outputs from an exit handler that runs after this one.
        self.flush(float(os.environ.get("RUNSTREAM_EXIT_FLUSH_TIMEOUT", "30")))

    # --- the upload thread ---
    def _loop(self) -> None:
        client = self._client_factory()
        delay = 0.2
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._queue or self._closed)
                    if self._closed:
                        return
                    item = self._queue[0]
                    self._busy = 1
                    self._queue.popleft()
                try:
                    stored = put_stream(client, item)
                except Refused as exc:
                    self.refused += 1
                    log.warning("runstream: the api refused file %r of run %s (%s); it is dropped", item.path, item.run_id, exc)
                    self._done(item)
                    continue
                except (httpx.HTTPError, OSError) as exc:
                    self.failed_attempts += 1
                    if not self._warned_down:
                        self._warned_down = True
                        log.warning("runstream: file uploads to %s failing (%s); retrying in the background", self.settings.api, exc)
                    with self._cond:
                        self._queue.appendleft(item)  # first again: files go in order
                        self._busy = 0
                        self._cond.wait_for(lambda: self._closed, delay)
                    delay = min(delay * 2, MAX_BACKOFF_S)
                    client.close()
                    client = self._client_factory()
                    continue
                if self._warned_down:
                    self._warned_down = False
                    log.warning("runstream: file uploads to %s work again", self.settings.api)
                delay = 0.2
                self._announce(item, stored)
                self.uploaded += 1
                self._done(item)
        finally:
            client.close()

    def _announce(self, item: Item, stored: dict[str, Any]) -> None:
        sink = item.sink
        if sink is None:  # adopted from a dead process: a fresh writer for the run's event
            sink = self._sink_factory(item.run_id, item.project)
            self._held.append(sink)
        payload: dict[str, Any] = {
            "path": item.path,
            "file_kind": stored.get("file_kind", item.file_kind) if item.file_kind == "file" else item.file_kind,
            "size": int(stored.get("size", item.data.stat().st_size)),
            "uri": stored.get("uri", ""),
            "sha256": stored.get("sha256", ""),
            "content_type": stored.get("content_type", ""),
        }
        if item.name:
            payload["name"] = item.name
        sink.enqueue("file", payload)

    def _done(self, item: Item) -> None:
        for p in (item.data, item.meta):
            p.unlink(missing_ok=True)
        folder = item.data.parent
        if folder != self.dir and not any(folder.glob("*.bin")):  # an adopted folder, emptied
            shutil.rmtree(folder, ignore_errors=True)
        with self._cond:
            self._busy = 0
            idle = not self._queue
            self._cond.notify_all()
        if idle and self._held and self._flush_events(30.0):
            self._held.clear()

    def _adopt(self) -> None:
        """Queue the files of dead processes' spool folders (their runs' events are made anew)."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            try:
                pid = int((folder / "owner").read_text())
            except (OSError, ValueError):
                pid = -1
            if folder == self.dir or (pid > 0 and pid != os.getpid() and _alive(pid)):
                continue
            for meta_path in sorted(folder.glob("*.json")):
                data = meta_path.with_suffix(".bin")
                try:
                    meta = json.loads(meta_path.read_text())
                except (OSError, ValueError):
                    continue
                if data.is_file():
                    item = Item(
                        data, meta_path, meta["project"], meta["run"], meta["path"], meta.get("file_kind", "file"), meta.get("name", ""), None
                    )
                    self._queue.append(item)
            if not self._queue:
                shutil.rmtree(folder, ignore_errors=True)
        if self._queue:
            log.warning("runstream: uploading %d file(s) spooled by an earlier process", len(self._queue))


_uploads: Uploads | None = None
_uploads_lock = threading.Lock()


def get_uploads(settings: Settings, *, sink_factory: Callable[[str, str], FileSink], flush_events: Callable[[float | None], bool]) -> Uploads:
    """The process's uploader for `settings`' api and home (made on first use)."""
    global _uploads
    with _uploads_lock:
        if _uploads is None or _uploads._closed or _uploads.settings.api != settings.api or _uploads.settings.home != settings.home:
            _uploads = Uploads(settings, sink_factory=sink_factory, flush_events=flush_events)
        return _uploads
