"""Kafka client construction: every producer, consumer and admin client runstream makes.

Sizes, compression and timeouts live here, next to the reason for each, so the
client, the gateway, the processor and the live hub agree on them. aiokafka is
imported here and nowhere else in the core.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from runstream.config import Settings
from runstream.wire import MAX_EVENT_BYTES

# A produce request carries many records; the largest single event is MAX_EVENT_BYTES.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# Record and batch headers within a producer's max_request_size.
RECORD_OVERHEAD_BYTES = 1024


def client_producer(settings: Settings) -> AIOKafkaProducer:
    """The training client's producer: idempotent (a retried send is stored once), 1 MiB
    batches filled for up to 10 ms, compressed only across a network (Settings)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka,
        enable_idempotence=True,
        compression_type=settings.kafka_compression,
        linger_ms=10,
        max_batch_size=1024 * 1024,
        max_request_size=MAX_REQUEST_BYTES,
        request_timeout_ms=15_000,
    )


def gateway_producer(settings: Settings, linger_ms: int = 5) -> AIOKafkaProducer:
    """The api gateway's producer: idempotent, lz4 (HTTP clients are usually remote); the
    gateway refuses an event that would not fit one request with RECORD_OVERHEAD_BYTES.
    The MLflow api passes linger_ms=0: its clients send one call at a time and wait for it,
    so a linger only adds to every call."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka,
        enable_idempotence=True,
        compression_type="lz4",
        linger_ms=linger_ms,
        max_request_size=MAX_EVENT_BYTES,
        max_batch_size=1024 * 1024,
    )


def processor_producer(settings: Settings) -> AIOKafkaProducer:
    """The processor's producer, for live updates and dead letters: 5 ms linger keeps live
    latency low."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka, linger_ms=5, compression_type=settings.kafka_compression, max_request_size=MAX_REQUEST_BYTES
    )


class CoordinatorStartupFilter(logging.Filter):
    """Logs aiokafka's "Group Coordinator Request failed: GroupCoordinatorNotAvailableError"
    at INFO, not ERROR. A fresh broker answers it until it has created its offsets topic
    (the first seconds of `make up`), a newcomer reads the ERROR line as a failure, and
    aiokafka retries on its own; any other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "GroupCoordinatorNotAvailableError" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


_COORDINATOR_FILTER = CoordinatorStartupFilter()


def processor_consumer(settings: Settings, group_id: str) -> AIOKafkaConsumer:
    """The processor's group consumer: positions are committed only after ClickHouse has the
    batch (no auto-commit); a short fetch wait keeps live updates prompt; a 10 s session
    notices a killed processor quickly."""
    coordinator_log = logging.getLogger("aiokafka.consumer.group_coordinator")
    if _COORDINATOR_FILTER not in coordinator_log.filters:
        coordinator_log.addFilter(_COORDINATOR_FILTER)
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_REQUEST_BYTES,
        fetch_max_wait_ms=20,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )


def live_consumer(settings: Settings) -> AIOKafkaConsumer:
    """An api instance's reader of the live topic: no group (every instance reads every
    update), from the latest offset. The live topic has one partition, so a fetch waiting at
    the broker never holds back another partition's records: the broker answers it as soon
    as an update is appended, whatever this wait, and a short wait only adds empty fetches."""
    return AIOKafkaConsumer(
        settings.live_topic,
        bootstrap_servers=settings.kafka,
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=500,
        enable_auto_commit=False,
    )


def offsets_reader(settings: Settings) -> AIOKafkaConsumer:
    """A consumer that only asks for partitions' end offsets (the MLflow api's read-after-write):
    no group, no subscription, never fetches records."""
    return AIOKafkaConsumer(bootstrap_servers=settings.kafka, group_id=None, enable_auto_commit=False)


def admin_client(bootstrap: str, timeout_s: float | None = None) -> AIOKafkaAdminClient:
    if timeout_s is None:
        return AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
