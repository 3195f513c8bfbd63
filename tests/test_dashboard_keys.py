"""The key-entry screen in Chromium: against a server with API keys the page asks for one
(instead of failing on every request), says so when a key is refused, and with a good key
shows that project's runs and opens the live socket."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from runstream import Experiment
from runstream.api.app import create_app, listen_socket, server_config
from runstream.keys import KeyStore
from tests.conftest import Stack, free_port, wait_until
from tests.test_browser import Console

pytestmark = [pytest.mark.one_engine, pytest.mark.browser]


@pytest.fixture()
def secured_url(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A second api over the session's storage and live topic, with one key for project keyed-<uuid>."""
    project = f"keyed-{uuid.uuid4().hex[:6]}"
    token, _ = KeyStore(tmp_path / "keys.json").create(project, "browser")
    app = create_app(stack.settings.with_(home=tmp_path), stack.store)
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, lifespan="on"))
    stack.loop.call_soon_threadsafe(lambda: stack.loop.create_task(server.serve(sockets=[listen_socket("127.0.0.1", port)])))
    wait_until(lambda: server.started, 30, what="secured api start")
    try:
        yield f"http://127.0.0.1:{port}", f"{project}\n{token}"
    finally:
        server.should_exit = True
        wait_until(lambda: not server.started or server.should_exit, 10, what="secured api stop")


def test_key_entry_screen(stack: Stack, secured_url: tuple[str, str], chromium: Any, test_output: Path) -> None:
    url, both = secured_url
    project, token = both.split("\n")
    run = Experiment("keyed", settings=stack.settings.with_(project=project)).start_logging(name="behind-a-key")
    run.log("loss", 0.5)
    run.complete()
    run.get_metrics()

    context = chromium.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    console = Console(page)
    try:
        page.goto(f"{url}/#/")
        page.wait_for_selector(".key-entry input#api-key")
        assert "API key required" in page.inner_text(".key-entry")
        page.screenshot(path=str(test_output / "dashboard-key-entry.png"))

        # a wrong key: the page reloads, is refused again, and says so
        page.fill("input#api-key", "rs_not_a_key")
        page.press("input#api-key", "Enter")
        page.wait_for_selector(".key-entry .msg.error:has-text('refused')")

        # the right key: that project's runs, and the live socket opens with it
        page.fill("input#api-key", token)
        page.click(".key-entry button.primary")
        page.wait_for_selector(f'tr[data-run="{run.id}"]')
        assert page.locator(".key-entry").count() == 0
        page.wait_for_selector("#live[data-state=open]")
        assert page.evaluate("localStorage.getItem('runstream_api_key')") == token
        page.screenshot(path=str(test_output / "dashboard-key-accepted.png"))
        # refused requests are Chromium's "failed resource" lines (401) and the closed socket; nothing else
        errors = [e for e in console.errors if "status of 401" not in e and "/ws" not in e]
        assert errors == [], console.errors
    except Exception:
        print("console errors:", console.errors)
        page.screenshot(path=str(test_output / "dashboard-keys-failure.png"), full_page=True)
        raise
    finally:
        context.close()
