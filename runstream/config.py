"""Configuration from the environment (SPEC: Configuration); flags override."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value else default


def _loopback(bootstrap: str) -> bool:
    hosts = [part.strip().rsplit(":", 1)[0].strip("[]") for part in bootstrap.split(",") if part.strip()]
    return bool(hosts) and all(h in ("localhost", "::1") or h.startswith("127.") for h in hosts)


def compression_for(value: str, bootstrap: str) -> str | None:
    """The producer compression for RUNSTREAM_KAFKA_COMPRESSION (auto: none for a broker on
    this host, where lz4 only costs the training process CPU; lz4 across a network)."""
    value = value.strip().lower()
    if value == "auto":
        return None if _loopback(bootstrap) else "lz4"
    if value in ("", "none"):
        return None
    if value not in ("gzip", "snappy", "lz4", "zstd"):
        raise ValueError(f"RUNSTREAM_KAFKA_COMPRESSION must be auto, none, gzip, snappy, lz4 or zstd; got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path(_env("RUNSTREAM_HOME", "./.runstream")).resolve())
    kafka: str = field(default_factory=lambda: _env("RUNSTREAM_KAFKA", "localhost:9092"))
    clickhouse: str = field(default_factory=lambda: os.environ.get("RUNSTREAM_CLICKHOUSE", ""))
    api: str = field(default_factory=lambda: _env("RUNSTREAM_API", "http://localhost:8000"))
    api_key: str | None = field(default_factory=lambda: os.environ.get("RUNSTREAM_API_KEY") or None)
    project: str = field(default_factory=lambda: _env("RUNSTREAM_PROJECT", "default"))
    run_id: str | None = field(default_factory=lambda: os.environ.get("RUNSTREAM_RUN_ID") or None)
    # Topic names carry a prefix so several pipelines (or test sessions) can share a broker.
    topic_prefix: str = field(default_factory=lambda: _env("RUNSTREAM_TOPIC_PREFIX", "runstream"))
    partitions: int = field(default_factory=lambda: int(_env("RUNSTREAM_PARTITIONS", "8")))
    group_id: str = field(default_factory=lambda: _env("RUNSTREAM_GROUP", "runstream-processor"))
    # Producer compression of the client's events: lz4 shrinks packed columns ~4x on the
    # wire but costs the training process CPU (see compression_for).
    kafka_compression_setting: str = field(default_factory=lambda: _env("RUNSTREAM_KAFKA_COMPRESSION", "auto"))
    # User SQL (`POST /api/v1/query`): queries running at once, one project's share of them,
    # and optionally a ClickHouse user of its own (a read-only settings profile on a server).
    sql_concurrency: int = field(default_factory=lambda: int(_env("RUNSTREAM_SQL_CONCURRENCY", "4")))
    sql_project_share: int = field(default_factory=lambda: int(_env("RUNSTREAM_SQL_PROJECT_SHARE", "2")))
    sql_clickhouse: str = field(default_factory=lambda: os.environ.get("RUNSTREAM_SQL_CLICKHOUSE", ""))

    def __post_init__(self) -> None:
        compression_for(self.kafka_compression_setting, self.kafka)  # a bad value fails here, not in the shipper thread

    @property
    def kafka_compression(self) -> str | None:
        return compression_for(self.kafka_compression_setting, self.kafka)

    @property
    def clickhouse_dsn(self) -> str:
        return self.clickhouse or f"chdb://{self.home / 'clickhouse'}"

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}.events"

    @property
    def live_topic(self) -> str:
        return f"{self.topic_prefix}.live"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.topic_prefix}.deadletter"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def load() -> Settings:
    return Settings()
