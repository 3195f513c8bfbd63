"""The local development ClickHouse server: `runstream clickhouse start|stop|status`.

It owns one background process speaking ClickHouse's HTTP interface on
127.0.0.1:PORT, its pid file, its log file and its data, all under
$RUNSTREAM_HOME/clickhouse-server (config.xml, data/, server.pid, server.port,
server.log). `start` returns once `GET /ping` answers "Ok."; `stop` sends SIGTERM
and waits (SIGKILL after the timeout).

The process is chdb-core's embedded clickhouse-local, not clickhouse-server: a query
`SYSTEM START LISTEN HTTP` run through `chdb._chdb.query` opens the HTTP listener
(port and host from the config.xml in its working folder), which lives while that
call runs, so the child keeps one endless query going. What differs from production:
one user, `default`, with no password and every right (no users.xml, grants or
quotas), no Keeper (no Replicated* tables, no ON CLUSTER), no native TCP port
(HTTP only), no system log tables, and one process for everything. It needs chdb,
which the `runstream[server]` install brings; it is a dev tool, not a deployment.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from runstream.daemon import log_tail, port_open, running_pid, terminate
from runstream.errors import ServiceError

HOST = "127.0.0.1"
DEFAULT_PORT = 8123
# The child's one query: open the listener, then keep the call (and so the listener) alive.
_SERVE_QUERY = (
    "SYSTEM START LISTEN HTTP; "
    "SELECT sleepEachRow(1) FROM system.numbers "
    "SETTINGS max_block_size=1, function_sleep_max_microseconds_per_block=0 FORMAT Null"
)
_MARKER = b"runstream.clickhouse_server"


class ClickHouseServerError(ServiceError):
    """The local development ClickHouse server cannot start, answer or stop."""


def pings(url: str, timeout: float = 1.0) -> bool:
    """True when a ClickHouse HTTP interface at `url` answers `GET /ping` with "Ok."."""
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=timeout) as resp:
            return bool(resp.status == 200 and resp.read().strip() == b"Ok.")
    except (OSError, ValueError):
        return False


class LocalClickHouse:
    def __init__(self, home: Path, port: int = DEFAULT_PORT) -> None:
        self.dir = home / "clickhouse-server"
        self.port = port
        self.pid_file = self.dir / "server.pid"
        self.port_file = self.dir / "server.port"
        self.log_file = self.dir / "server.log"

    @staticmethod
    def url_for(port: int) -> str:
        return f"http://{HOST}:{port}"

    @property
    def url(self) -> str:
        return self.url_for(self.port)

    def pid(self) -> int | None:
        return running_pid(self.pid_file, _MARKER)

    def running_port(self) -> int:
        """The port the running server was started on (the flag's when unknown)."""
        try:
            return int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return self.port

    def start(self, timeout: float = 60.0) -> str:
        pid = self.pid()
        if pid is not None:
            raise ClickHouseServerError(f"already running (pid {pid}) at {self.url_for(self.running_port())}; stop it first")
        if port_open(HOST, self.port):
            what = "a ClickHouse server" if pings(self.url) else "something that is not runstream's ClickHouse"
            raise ClickHouseServerError(f"port {self.port} on {HOST} is taken by {what}; choose another with --port")
        if importlib.util.find_spec("chdb") is None:
            raise ClickHouseServerError("the local ClickHouse server needs chdb: pip install 'runstream[server]'")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.xml").write_text(f"<clickhouse><http_port>{self.port}</http_port><listen_host>{HOST}</listen_host></clickhouse>\n")
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runstream.clickhouse_server", str(self.dir / "data")],
                cwd=self.dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        self.port_file.write_text(str(self.port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ClickHouseServerError(f"ClickHouse exited with {proc.returncode}; last log lines:\n{self.tail()}")
            if pings(self.url):
                return f"started (pid {proc.pid}) at {self.url}"
            time.sleep(0.1)
        terminate(proc.pid, self.pid_file, _MARKER, 10.0)
        raise ClickHouseServerError(f"ClickHouse did not answer {self.url}/ping within {timeout}s; last log lines:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> str:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "stopped (was not running)"
        terminate(pid, self.pid_file, _MARKER, timeout)
        return f"stopped (pid {pid})"

    def status(self) -> str:
        pid = self.pid()
        if pid is not None:
            url = self.url_for(self.running_port())
            return f"running (pid {pid}) at {url}; {'answering' if pings(url) else 'not answering yet'}"
        return f"stopped ({self.url} would be its URL)"

    def tail(self, n: int = 30) -> str:
        return log_tail(self.log_file, n)


def _serve(data_dir: str) -> None:
    """The child: open the HTTP listener (config.xml in the working folder) and keep it open."""
    import chdb._chdb as engine  # type: ignore[import-not-found,import-untyped,unused-ignore]

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    engine.query(_SERVE_QUERY, "TabSeparated", path=data_dir)  # type: ignore[attr-defined,unused-ignore]


if __name__ == "__main__":
    _serve(sys.argv[1])
