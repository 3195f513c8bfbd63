"""Session fixtures: one real Kafka broker, ClickHouse two ways (the embedded
engine and a ClickHouse HTTP server), and a pipeline (processor + api) running
on a background event loop.

`store`, and with it `stack` and `settings`, is parametrised by engine: every
test that touches storage runs on `chdb://` and on `http://` (pytest runs all
of one engine's tests, then tears its stack down before the next one's).
`RUNSTREAM_TEST_ENGINES=chdb` (or `http`) narrows a local run to one engine;
`@pytest.mark.one_engine` keeps a test whose subject is not storage (the
browser, packaging) to the embedded engine.

Tests isolate themselves with fresh topic prefixes and run ids rather than
fresh services, so the suite starts each service once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn

from runstream.clickhouse_server import LocalClickHouse
from runstream.config import Settings
from runstream.kafka_broker import LocalBroker, broker_answers
from runstream.processor.consumer import Processor
from runstream.storage.store import Store, get_store

T = TypeVar("T")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # the browser tests' Chromium (Debian's; Playwright's own download does not work here)

# Runs started by tests must not tee pytest's own streams; test_capture turns it on explicitly.
os.environ["RUNSTREAM_CAPTURE_OUTPUT"] = "0"


class NullShipper:
    """Stands in for a Run's shipper (no network): the test looks at what the run buffered."""

    over_limit = False

    def register(self, run: Any) -> None: ...

    def nudge(self) -> None: ...

    def drop(self, n: int) -> None: ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Chromium through Playwright's sync API, per module (the API holds the thread's event loop while it runs)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (make chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def test_output() -> Path:
    out = Path(os.environ.get("RUNSTREAM_TEST_OUTPUT", Path(__file__).resolve().parent.parent / "test-output"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runstream-home")


@pytest.fixture(scope="session")
def kafka_bootstrap(home: Path) -> Iterator[str]:
    external = os.environ.get("RUNSTREAM_TEST_KAFKA")
    if external and broker_answers(external):
        yield external
        return
    bootstrap = f"127.0.0.1:{free_port()}"
    broker = LocalBroker(home, bootstrap)
    broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


ENGINES = tuple(e for e in os.environ.get("RUNSTREAM_TEST_ENGINES", "chdb,http").split(",") if e)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "one_engine: run on the embedded engine only (the test's subject is not storage)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        engine = getattr(getattr(item, "callspec", None), "params", {}).get("store")
        (drop if engine not in (None, ENGINES[0]) and item.get_closest_marker("one_engine") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def clickhouse_server(home: Path) -> Iterator[str]:
    """A ClickHouse HTTP server (chdb's clickhouse-local with its listener) for the session: its DSN."""
    server = LocalClickHouse(home, free_port())
    server.start()
    try:
        yield f"{server.url}/default"
    finally:
        server.stop()


@pytest.fixture(scope="session", params=ENGINES)
def store(request: pytest.FixtureRequest, home: Path) -> Store:
    if request.param == "http":
        return get_store(request.getfixturevalue("clickhouse_server"))
    return get_store(f"chdb://{home / 'clickhouse'}")


class Stack:
    """Processor + api on one event loop in a background thread."""

    def __init__(self, settings: Settings, store: Store, **processor_options: Any) -> None:
        self.settings = settings
        self.store = store
        self.processor_options = processor_options  # Processor's keyword arguments (ledger_interval, ...)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stack-loop", daemon=True)
        self.thread.start()
        self.processor: Processor | None = None
        self.server: uvicorn.Server | None = None
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        from runstream.api.app import create_app, listen_socket, server_config

        self.processor = Processor(self.settings, self.store, **self.processor_options)
        self.run(self.processor.start())
        app = create_app(self.settings, self.store, self.processor)
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port, lifespan="on"))
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.server.serve(sockets=[listen_socket("127.0.0.1", self.port)])))  # type: ignore[union-attr]
        wait_until(lambda: self.server is not None and self.server.started, 30, what="api server start")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            wait_until(lambda: not self.server.started or self.server.should_exit, 10)  # type: ignore[union-attr]
        if self.processor is not None:
            self.run(self.processor.stop())
        time.sleep(0.2)
        self.loop.call_soon_threadsafe(self.loop.stop)


def new_settings(home: Path, kafka: str, api: str = "http://127.0.0.1:1", **changes: Any) -> Settings:
    prefix = changes.pop("topic_prefix", f"t{uuid.uuid4().hex[:10]}")
    return Settings().with_(
        home=home, kafka=kafka, api=api, topic_prefix=prefix, partitions=4, project="default", api_key=None, run_id=None, **changes
    )


@pytest.fixture(scope="session")
def stack(home: Path, kafka_bootstrap: str, store: Store) -> Iterator[Stack]:
    port_holder = Stack(new_settings(home, kafka_bootstrap), store)
    settings = port_holder.settings.with_(api=port_holder.api_url, clickhouse=store.dsn)
    port_holder.settings = settings
    port_holder.start()
    try:
        yield port_holder
    finally:
        port_holder.stop()


@pytest.fixture()
def settings(stack: Stack) -> Settings:
    """Client settings pointing at the session stack."""
    return stack.settings
