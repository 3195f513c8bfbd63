"""The local development broker: Apache Kafka (KRaft, combined mode) from the
jars Maven Central serves, run with the machine's Java.

Jars are fetched once with `mvn dependency:copy-dependencies` (pom in
kafka_dist/) into a per-user cache, so later starts take seconds. Data lives
under $RUNSTREAM_HOME/kafka. The broker is sized for a 2-core machine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from runstream.daemon import log_tail, port_open, running_pid, terminate
from runstream.errors import ServiceError

_MARKER = b"kafka.Kafka"  # in the broker's command line: a pid of ours

POM = Path(__file__).resolve().parent / "kafka_dist" / "pom.xml"
KAFKA_VERSION = "4.1.1"


class BrokerError(ServiceError):
    """The local development broker cannot be fetched, started or stopped."""


def jars_dir() -> Path:
    override = os.environ.get("RUNSTREAM_KAFKA_JARS")
    if override:
        return Path(override)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "runstream" / f"kafka-{KAFKA_VERSION}-jars"


def ensure_jars(verbose: bool = True) -> Path:
    target = jars_dir()
    marker = target / ".complete"
    if marker.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is needed to fetch the Kafka jars; install it (apt-get install maven)")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if verbose:
        print(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {target} ...", file=sys.stderr, flush=True)
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"mvn failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    marker.write_text(KAFKA_VERSION)
    return target


def parse_bootstrap(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return (host or "localhost"), int(port or 9092)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _answers(bootstrap: str, timeout: float) -> bool:
    from runstream import kafka

    admin = kafka.admin_client(bootstrap, timeout)
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
        return True
    except Exception:
        return False
    finally:
        try:
            await admin.close()
        except Exception:
            pass


def broker_answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a Kafka broker answers a metadata request at `bootstrap`."""
    host, port = parse_bootstrap(bootstrap)
    if not port_open(host, port):
        return False
    return asyncio.run(_answers(bootstrap, timeout))


class LocalBroker:
    def __init__(self, home: Path, bootstrap: str) -> None:
        self.dir = home / "kafka"
        self.bootstrap = bootstrap
        self.host, self.port = parse_bootstrap(bootstrap)
        self.pid_file = self.dir / "broker.pid"
        self.log_file = self.dir / "broker.log"

    def pid(self) -> int | None:
        return running_pid(self.pid_file, _MARKER)

    def _write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        props = self.dir / "server.properties"
        controller_port_file = self.dir / "controller.port"
        if controller_port_file.exists() and int(controller_port_file.read_text()) != self.port:
            controller_port = int(controller_port_file.read_text())
        else:
            controller_port = _free_port()
            while controller_port == self.port:  # the client port may be free (not yet bound) too
                controller_port = _free_port()
            controller_port_file.write_text(str(controller_port))
        host = "127.0.0.1" if self.host in ("localhost", "127.0.0.1") else self.host
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                    f"listeners=PLAINTEXT://{host}:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
                    f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.dir / 'data'}",
                    "num.partitions=8",
                    "auto.create.topics.enable=true",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=4",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "message.max.bytes=16777216",
                    "replica.fetch.max.bytes=16777216",
                    # Small footprint for a 2-core machine.
                    "log.cleaner.threads=1",
                    "log.cleaner.dedupe.buffer.size=2097152",
                    "num.network.threads=2",
                    "num.io.threads=2",
                    "num.recovery.threads.per.data.dir=1",
                    "background.threads=2",
                    "num.replica.fetchers=1",
                    "log.retention.hours=168",
                    "log.segment.bytes=268435456",
                    "",
                ]
            )
        )
        (self.dir / "log4j2.properties").write_text(
            "rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
            "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
            "appender.stdout.layout.type=PatternLayout\nappender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
            "logger.kafka.name=kafka\nlogger.kafka.level=WARN\n"
            "logger.server.name=kafka.server.KafkaServer\nlogger.server.level=INFO\n"
        )
        return props

    def _java(self, jars: Path, main: str, *args: str, heap: str = "512m") -> list[str]:
        java = shutil.which("java") or "java"
        return [
            java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:ActiveProcessorCount=2",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            f"{jars}/*",
            main,
            *args,
        ]

    def start(self, timeout: float = 90.0) -> str:
        if self.pid() is not None and broker_answers(self.bootstrap):
            return f"already running (pid {self.pid()}) at {self.bootstrap}"
        if port_open(self.host, self.port):
            if broker_answers(self.bootstrap):
                return f"a broker already answers at {self.bootstrap}"
            raise BrokerError(f"port {self.port} is taken by something that is not a Kafka broker")
        jars = ensure_jars()
        props = self._write_config()
        if not (self.dir / "data" / "meta.properties").exists():
            cluster_id = uuid.uuid4().bytes
            import base64

            cid = base64.urlsafe_b64encode(cluster_id).decode().rstrip("=")
            fmt = subprocess.run(
                # "--cluster-id=" form: a base64 id may start with "-", which argparse takes for an option.
                self._java(jars, "kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(props), heap="256m"),
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting Kafka storage failed:\n{fmt.stdout[-2000:]}\n{fmt.stderr[-2000:]}")
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                self._java(jars, "kafka.Kafka", str(props)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(f"Kafka exited with {proc.returncode}; last log lines:\n{self.tail()}")
            if port_open(self.host, self.port) and broker_answers(self.bootstrap, timeout=2.0):
                return f"started (pid {proc.pid}) at {self.bootstrap}"
            time.sleep(0.2)
        raise BrokerError(f"Kafka did not accept clients within {timeout}s; last log lines:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> str:
        pid = self.pid()
        if pid is None:
            return "not running"
        terminate(pid, self.pid_file, _MARKER, timeout)
        return f"stopped (pid {pid})"

    def status(self) -> str:
        pid = self.pid()
        answers = broker_answers(self.bootstrap)
        if pid is not None:
            return f"running (pid {pid}) at {self.bootstrap}; {'accepting clients' if answers else 'not answering yet'}"
        if answers:
            return f"not started by runstream, but a broker answers at {self.bootstrap}"
        return "not running"

    def tail(self, n: int = 30) -> str:
        return log_tail(self.log_file, n)
