"""A fresh broker's normal start-up logs no ERROR: aiokafka's coordinator-not-available
line, answered until the broker has made its offsets topic, comes out at INFO."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError

from runstream import kafka
from runstream.config import Settings


def test_coordinator_not_available_is_info_and_other_errors_stay_errors(caplog: pytest.LogCaptureFixture) -> None:
    async def build() -> None:
        consumer = kafka.processor_consumer(Settings().with_(kafka="127.0.0.1:1"), "g")  # built, never started
        await consumer.stop()

    asyncio.run(build())
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    with caplog.at_level(logging.INFO, logger="aiokafka"):
        coordinator.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
        coordinator.error("Error sending JoinGroupRequest_v2 to node 1 [[Error 7] RequestTimedOutError]")
    levels = [(r.levelname, r.getMessage()[:40]) for r in caplog.records if r.name == coordinator.name]
    assert levels == [("INFO", "Group Coordinator Request failed: [Error"), ("ERROR", "Error sending JoinGroupRequest_v2 to nod")]
    asyncio.run(build())  # a second consumer does not add the filter twice
    assert sum(isinstance(f, kafka.CoordinatorStartupFilter) for f in coordinator.filters) == 1
