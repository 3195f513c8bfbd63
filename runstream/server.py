"""Running processor and api in one process (`runstream up`) or apart."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvicorn

from runstream.config import Settings

log = logging.getLogger("runstream")

# Allocations between young collections. A batch makes tens of thousands of short-lived
# objects (decoded events, rows, live updates) that live across its write: with the
# default threshold they survived into the oldest generation, whose full collections
# stopped the event loop, and with it the live stream (docs/performance.md, "GC").
GC_THRESHOLDS = (20_000, 10, 10)


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Runs a server coroutine on libuv's event loop (uvloop) where it is installed, else on
    asyncio's. Every request of the api is a chain of socket reads and writes (HTTP in and
    out, the Kafka produce and its acknowledgement), and uvloop does them in C (the A/B on
    the MLflow api's time per call is in docs/performance.md, issue 16)."""
    try:
        import uvloop
    except ImportError:  # Windows, or a build without it: asyncio's loop works the same, slower
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def tune_gc() -> None:
    """For a long-running server process, once started: what was allocated until now
    (modules, the app) is never garbage, so the collector stops scanning it (gc.freeze),
    and young collections run less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _until_processor_fails(work: Awaitable[Any], proc: Any, end_work: Callable[[], None]) -> None:
    """Await `work` (the api server, or the wait for a signal). A processor whose loop
    stopped on a non-transient storage error ends it too (end_work), and its error is then
    raised: the process exits non-zero instead of living on without consuming."""
    running = asyncio.ensure_future(work)
    closed = asyncio.ensure_future(proc.wait_closed()) if proc is not None else None
    try:
        await asyncio.wait({running} if closed is None else {running, closed}, return_when=asyncio.FIRST_COMPLETED)
        if closed is not None and closed.done():
            end_work()
            await running
            closed.result()
        await running
    finally:
        for task in (running, closed):
            if task is not None and not task.done():
                task.cancel()


async def serve(
    settings: Settings,
    *,
    processor: bool,
    api: bool,
    host: str,
    port: int,
    demo: dict[str, Any] | None = None,
    metrics_port: int | None = None,
) -> None:
    from runstream.processor.consumer import Processor
    from runstream.storage.store import get_store

    store = get_store(settings.clickhouse_dsn)
    proc = None
    if processor:
        proc = Processor(settings, store)
        await proc.start()
        log.info("processor consuming %s at %s into %s", settings.events_topic, settings.kafka, settings.clickhouse_dsn)
        if metrics_port:
            from prometheus_client import start_http_server

            from runstream.api.metrics import registry_for

            start_http_server(metrics_port, addr="127.0.0.1", registry=registry_for(proc))
            log.info("Prometheus metrics at http://127.0.0.1:%d/metrics", metrics_port)
    stop_demo = threading.Event()
    try:
        if api:
            from runstream.api.app import create_app, listen_socket, server_config

            app = create_app(settings, store, proc)
            tune_gc()
            config = server_config(app, host, port, lifespan="on")
            server = uvicorn.Server(config)
            if demo is not None:
                from runstream.demo import DemoSweep

                sweep = DemoSweep(settings, stop_demo, trials=demo.get("runs", 4), steps=demo.get("steps", 120))
                threading.Thread(target=sweep.run, name="demo-sweep", daemon=True).start()
            print(f"runstream dashboard: http://{'localhost' if host in ('0.0.0.0', '127.0.0.1') else host}:{port}/", flush=True)
            await _until_processor_fails(server.serve(sockets=[listen_socket(host, port)]), proc, lambda: setattr(server, "should_exit", True))
        else:
            tune_gc()
            done = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, done.set)
            await _until_processor_fails(done.wait(), proc, done.set)
    finally:
        stop_demo.set()
        if proc is not None:
            await proc.stop()
