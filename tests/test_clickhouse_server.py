"""`runstream clickhouse start|stop|status` through the CLI, and the Store on the server it starts.

The server is started in a fresh RUNSTREAM_HOME on a free loopback port, used over
HTTP (migrations, an insert, a read back), refused a second start, and stopped; the
finally stops it whatever failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from runstream.clickhouse_server import pings
from runstream.daemon import port_open
from runstream.storage.store import get_store
from tests.conftest import free_port, wait_until


def cli(home: Path, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RUNSTREAM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "runstream.cli", "clickhouse", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_clickhouse_server_start_use_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        started = cli(home, "start", "--port", str(port))
        assert started.returncode == 0, started.stderr
        assert "started (pid " in started.stdout and url in started.stdout
        assert pings(url)  # start returned only once /ping answered
        assert (home / "clickhouse-server" / "server.pid").exists()

        status = cli(home, "status", "--port", str(port))
        assert status.returncode == 0 and status.stdout.startswith("running (pid ") and url in status.stdout, status

        store = get_store(f"{url}/default")  # user default, no password; runs the migrations
        assert "run_logs" in {row[0] for row in store.query_rows("SHOW TABLES FROM default")}
        run_id = uuid.uuid4().hex
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [("p", run_id, "stdout", now, i, f"line {i}", "t", 0, i) for i in range(3)]
        store.insert_rows("run_logs", rows, ["project", "run_id", "stream", "ts", "idx", "line", "kafka_topic", "kafka_partition", "kafka_offset"])
        back = store.query_rows("SELECT idx, line FROM run_logs WHERE run_id = {r:String} ORDER BY idx", {"r": run_id})
        assert back == [(0, "line 0"), (1, "line 1"), (2, "line 2")]

        again = cli(home, "start", "--port", str(port))
        assert again.returncode == 1 and "already running" in again.stderr and url in again.stderr, again
        elsewhere = cli(tmp_path / "other-home", "start", "--port", str(port))
        assert elsewhere.returncode == 1 and f"port {port} on 127.0.0.1 is taken" in elsewhere.stderr, elsewhere

        stopped = cli(home, "stop")
        assert stopped.returncode == 0 and stopped.stdout.startswith("stopped (pid "), stopped
        assert not port_open("127.0.0.1", port)
        assert cli(home, "status", "--port", str(port)).stdout.startswith("stopped")
    finally:
        cli(home, "stop")
        cli(tmp_path / "other-home", "stop")
        wait_until(lambda: not port_open("127.0.0.1", port), timeout=30, what=f"port {port} released")
