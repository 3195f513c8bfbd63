"""Prometheus /metrics reflects the pipeline's own counters."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runstream import Experiment
from runstream.config import Settings
from tests.conftest import Stack

# The subject is not storage: the embedded engine is enough (tests/conftest.py).
pytestmark = pytest.mark.one_engine


def _scrape(stack: Stack) -> dict[str, float]:
    response = httpx.get(f"{stack.api_url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = sample.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) + "}" if sample.labels else "")
            out[key] = sample.value
    return out


def test_metrics_count_the_pipeline(stack: Stack, settings: Settings) -> None:
    before = _scrape(stack)
    run = Experiment("metrics", settings=settings).start_logging()
    for i in range(1000):
        run.log("loss", float(i))
    run.complete()
    run.get_metrics()
    after = _scrape(stack)
    assert after["runstream_processor_points_written_total"] - before["runstream_processor_points_written_total"] >= 1000
    assert after["runstream_processor_events_in_total"] > before["runstream_processor_events_in_total"]
    assert after["runstream_processor_clickhouse_up"] == 1
    assert "runstream_processor_consumer_lag" in after and "runstream_processor_dead_letters_total" in after
    assert "runstream_processor_batches_retried_total" in after and "runstream_processor_phase_seconds_total{phase=write}" in after
    for name in ("runstream_ws_subscribers", "runstream_live_updates_in_total", "runstream_live_dropped_by_coalescing_total"):
        assert name in after
    assert "runstream_gateway_events_rejected_total" in after
