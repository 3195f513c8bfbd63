"""Prometheus metrics of the pipeline itself (`GET /metrics`, `runstream processor --metrics-port`).

A collector reads the live counters of the processor, the gateway and the
WebSocket hub at scrape time; each app gets its own registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class PipelineCollector(Collector):
    def __init__(self, processor: Any = None, gateway: Any = None, hub: Any = None) -> None:
        self.processor = processor
        self.gateway = gateway
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        if self.processor is not None:
            s = self.processor.stats
            for name, value, doc in (
                ("events_in", s.events_in, "Kafka records polled by the processor"),
                ("events_written", s.events_written, "events stored in ClickHouse"),
                ("events_skipped", s.events_skipped, "records skipped as already stored (replays, duplicate ids)"),
                ("points_written", s.points_written, "metric points stored in ClickHouse"),
                ("batches", s.batches, "batches written"),
                ("batches_retried", s.batches_retried, "ClickHouse calls retried with back-off"),
                ("fatal_storage_errors", s.fatal_storage_errors, "non-transient ClickHouse failures (each stops the processor)"),
                ("dead_letters", s.dead_letters, "events sent to the dead-letter topic"),
                ("live_updates_published", s.live_messages, "per-run live updates published"),
                ("live_bytes_published", s.live_bytes, "bytes of live updates published"),
            ):
                yield CounterMetricFamily(f"runstream_processor_{name}", doc, value=value)
            yield GaugeMetricFamily("runstream_processor_consumer_lag", "records behind the partition high-water marks", value=s.consumer_lag)
            up = 1 if s.clickhouse_ok else 0
            yield GaugeMetricFamily("runstream_processor_clickhouse_up", "1 when the last ClickHouse call succeeded", value=up)
            phases = CounterMetricFamily("runstream_processor_phase_seconds", "seconds spent per batch phase", labels=["phase"])
            for phase, seconds in s.seconds.items():
                phases.add_metric([phase], seconds)
            yield phases
        if self.gateway is not None:
            yield CounterMetricFamily("runstream_gateway_events_accepted", "events accepted by POST /api/v1/events", value=self.gateway.events_in)
            yield CounterMetricFamily("runstream_gateway_events_rejected", "requests rejected for bad input", value=self.gateway.rejected)
        if self.hub is not None:
            st = self.hub.stats
            yield GaugeMetricFamily("runstream_ws_subscribers", "open WebSocket connections", value=len(self.hub.subscribers))
            for name, doc in (
                ("updates_in", "live updates read from the live topic"),
                ("messages_sent", "WebSocket frames sent"),
                ("updates_sent", "per-run updates sent inside frames"),
                ("coalesced", "updates merged into a pending one for a slow subscriber"),
                ("dropped_by_coalescing", "points or updates dropped to keep a slow subscriber bounded"),
            ):
                yield CounterMetricFamily(f"runstream_live_{name}", doc, value=st.get(name, 0))


def registry_for(processor: Any = None, gateway: Any = None, hub: Any = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(processor, gateway, hub))
    return registry
