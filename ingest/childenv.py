"""The environment that makes a child process log where this one does.

A submitted script (ingest/compute.py) finds its run and its pipeline through
the environment only: `child_env` writes every field of `Settings` back as the
RUNSTREAM_* variable it is read from (runstream.config), plus the run's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from runstream.config import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """RUNSTREAM_* variables that a child's `Settings()` reads back as `settings`."""
    env = {
        "RUNSTREAM_HOME": str(settings.home),
        "RUNSTREAM_KAFKA": settings.kafka,
        "RUNSTREAM_API": settings.api,
        "RUNSTREAM_PROJECT": settings.project,
        "RUNSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "RUNSTREAM_PARTITIONS": str(settings.partitions),
        "RUNSTREAM_GROUP": settings.group_id,
        "RUNSTREAM_KAFKA_COMPRESSION": settings.kafka_compression_setting,
    }
    if settings.clickhouse:
        env["RUNSTREAM_CLICKHOUSE"] = settings.clickhouse
    if settings.api_key:
        env["RUNSTREAM_API_KEY"] = settings.api_key
    return env


def child_env(settings: Settings, extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with `settings` and `extra` on top; a
    RUNSTREAM_RUN_ID of this process is not inherited unless `extra` sets one."""
    env = dict(os.environ if base is None else base)
    env.pop("RUNSTREAM_RUN_ID", None)
    env.update(settings_env(settings))
    env.update(extra or {})
    return env
