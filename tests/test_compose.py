"""docker-compose.yml, parsed as YAML (no services, no Docker daemon): the four services of
the SPEC's `docker compose up`, Kafka's two listeners (an internal one the services use,
localhost:9092 for a training script on the host), its data on its volume, a healthcheck
for every service, start-up ordered on health, and the published ports of the api.

Whether the file is also valid for Compose itself is checked with `docker compose config`
only where such a binary exists; the YAML checks stand on their own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.test_topology import SHARED_ENV, api_args, processor_args

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (Compose allows a mapping or a KEY=VALUE list)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """NAME://host:port,... -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host port, container port) of each `ports` entry, short or long syntax."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append((str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        out.append((parts[-2] if len(parts) > 1 else "", parts[-1]))
    return out


def test_the_four_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "clickhouse", "processor", "api"} <= set(services), sorted(services)
    assert services["kafka"]["image"].startswith("apache/kafka:"), services["kafka"]["image"]
    # processor and api are the same build, run with different commands.
    assert services["processor"]["build"] == services["api"]["build"], (services["processor"]["build"], services["api"]["build"])
    assert services["processor"]["command"][:2] == ["runstream", "processor"], services["processor"]["command"]
    assert services["api"]["command"][:2] == ["runstream", "api"], services["api"]["command"]


def test_kafka_advertises_localhost_9092_to_the_host_and_an_internal_listener_to_the_services(
    services: dict[str, dict[str, Any]],
) -> None:
    kafka = env(services["kafka"])
    assert "broker" in kafka["KAFKA_PROCESS_ROLES"] and "controller" in kafka["KAFKA_PROCESS_ROLES"], kafka["KAFKA_PROCESS_ROLES"]
    bound = listeners(kafka["KAFKA_LISTENERS"])
    advertised = listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in bound and controller not in advertised, (bound, advertised)
    assert set(bound) <= set(protocols), (bound, protocols)

    # The host's listener: localhost:9092, bound on the same port and published as 9092.
    external = [name for name, address in advertised.items() if address == ("localhost", 9092)]
    assert len(external) == 1, advertised
    assert bound[external[0]][1] == 9092, bound
    assert ("9092", "9092") in published(services["kafka"]), services["kafka"].get("ports")

    # The internal listener: kafka's own service name, the one processor and api use.
    internal = kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert internal in advertised and internal != external[0] and internal != controller, (internal, advertised)
    host, port = advertised[internal]
    assert host == "kafka" and bound[internal][1] == port, (advertised, bound)
    for name in ("processor", "api"):
        assert env(services[name])["RUNSTREAM_KAFKA"] == f"kafka:{port}", (name, env(services[name]).get("RUNSTREAM_KAFKA"))


def test_kafka_keeps_its_log_dirs_on_its_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    mounts = {}
    for volume in services["kafka"].get("volumes") or []:
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else str(volume).split(":")[:2]
        mounts[PurePosixPath(target)] = source
    log_dirs = [PurePosixPath(d) for d in env(services["kafka"])["KAFKA_LOG_DIRS"].split(",")]
    for log_dir in log_dirs:
        under = [target for target in mounts if log_dir == target or target in log_dir.parents]
        assert under, (log_dir, sorted(map(str, mounts)))
        assert mounts[under[0]] in (compose.get("volumes") or {}), (mounts[under[0]], "not a named volume")


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name in ("kafka", "clickhouse"):
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), (name, check)
    kafka_test = " ".join(services["kafka"]["healthcheck"]["test"])
    assert re.search(r"kafka-(broker-api-versions|topics)\.sh", kafka_test) and "--bootstrap-server" in kafka_test, kafka_test
    clickhouse_test = " ".join(services["clickhouse"]["healthcheck"]["test"])
    assert "8123/ping" in clickhouse_test or "SELECT 1" in clickhouse_test, clickhouse_test

    # processor and api: the image's HEALTHCHECK (tests/test_docker.py owns the Dockerfile),
    # which asks RUNSTREAM_HEALTHCHECK_URL, by default the api's /healthz.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^HEALTHCHECK .*RUNSTREAM_HEALTHCHECK_URL", dockerfile, re.MULTILINE | re.DOTALL), (
        "the Dockerfile has no HEALTHCHECK on RUNSTREAM_HEALTHCHECK_URL"
    )
    for name in ("processor", "api"):
        check = services[name].get("healthcheck") or {}
        assert not check.get("disable") and check.get("test") != ["NONE"], (name, check)

    # The processor serves its metrics and points the healthcheck at them.
    command = services["processor"]["command"]
    assert "--metrics-port" in command, command
    metrics_port = int(command[command.index("--metrics-port") + 1])
    url = urlparse(env(services["processor"])["RUNSTREAM_HEALTHCHECK_URL"])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", metrics_port, "/metrics"), url
    # The api keeps the image's default (/healthz), or names it.
    api_url = env(services["api"]).get("RUNSTREAM_HEALTHCHECK_URL")
    assert api_url is None or urlparse(api_url).path == "/healthz", api_url


def test_processor_and_api_wait_for_healthy_kafka_and_clickhouse(services: dict[str, dict[str, Any]]) -> None:
    for name in ("processor", "api"):
        depends = services[name].get("depends_on")
        assert isinstance(depends, dict), (name, depends)
        assert {"kafka", "clickhouse"} <= set(depends), (name, depends)
        for target in ("kafka", "clickhouse"):
            assert depends[target].get("condition") == "service_healthy", (name, target, depends[target])


def test_clickhouse_server_is_the_tested_version(services: dict[str, dict[str, Any]]) -> None:
    image = services["clickhouse"]["image"]
    repo, _, tag = image.partition(":")
    assert repo == "clickhouse/clickhouse-server" and (tag == "26.9" or tag.startswith("26.9.")), image
    dsn = urlparse(env(services["processor"])["RUNSTREAM_CLICKHOUSE"])
    assert (dsn.scheme, dsn.hostname, dsn.port) == ("http", "clickhouse", 8123), dsn
    assert env(services["api"])["RUNSTREAM_CLICKHOUSE"] == env(services["processor"])["RUNSTREAM_CLICKHOUSE"]


def test_api_publishes_8000_and_the_processor_scales(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert ("8000", "8000") in published(api), api.get("ports")
    assert "0.0.0.0" in api["command"] and "8000" in [str(part) for part in api["command"]], api["command"]
    assert env(api)["RUNSTREAM_API"] == "http://localhost:8000", env(api).get("RUNSTREAM_API")
    # `docker compose up --scale processor=N`: no fixed host port, no fixed container name.
    processor = services["processor"]
    assert all(host == "" for host, _ in published(processor)), processor.get("ports")
    assert "container_name" not in processor, processor["container_name"]


def test_the_header_says_how_the_host_connects_and_how_to_scale() -> None:
    header = []
    for line in COMPOSE.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    for needle in ("RUNSTREAM_KAFKA=localhost:9092", "RUNSTREAM_API=http://localhost:8000", "--scale processor="):
        assert needle in text, needle


def _compose_command() -> list[str] | None:
    """`docker compose` or `docker-compose`, where one is installed and answers `version`."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        try:
            done = subprocess.run([*command, "version"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return command
    return None


def test_processor_and_api_run_as_the_topology_test_runs_them(services: dict[str, dict[str, Any]]) -> None:
    """tests/test_topology.py proves the shape (separate processes sharing one broker, one
    ClickHouse server, one topic prefix and one group); compose must start that shape."""
    processor, api = services["processor"], services["api"]
    assert processor["command"] == ["runstream", *processor_args(9108)]
    api_command = list(api["command"])
    host = api_command.index("--host")
    del api_command[host : host + 2]  # in a container the api listens on every interface
    assert api_command == ["runstream", *api_args(8000)]
    assert "8000:8000" in api["ports"]
    for key in SHARED_ENV:
        assert processor["environment"].get(key) == api["environment"].get(key), key
    assert urlparse(api["environment"]["RUNSTREAM_CLICKHOUSE"]).hostname == "clickhouse"
    assert api["environment"]["RUNSTREAM_KAFKA"].split(":")[0] == "kafka"


def test_compose_itself_accepts_the_file() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` (the plugin) nor `docker-compose` is installed")
    done = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
