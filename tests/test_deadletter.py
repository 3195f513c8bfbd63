"""Poison events go to the dead-letter topic with the reason; the pipeline keeps going."""

from __future__ import annotations

import asyncio
import base64
import time

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from runstream import Experiment
from runstream.processor.consumer import Processor
from runstream.processor.deadletter import DeadLetters
from runstream.processor.stats import ProcessorStats
from runstream.storage.store import Store
from tests.conftest import Stack, new_settings, wait_until


def test_poison_events_are_dead_lettered_and_the_rest_is_stored(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    settings = new_settings(home, kafka_bootstrap)
    proc = Processor(settings, store, group_id="g-dlq", publish_live=False)
    stack.run(proc.start())
    good = Experiment("dlq", settings=settings).start_logging(name="good")
    base = {"v": 1, "kind": "metrics", "run": good.id, "project": "default", "ts": time.time(), "names": ["a"], "s": [0]}
    poison = [
        b"not json at all",
        b"[1, 2, 3]",
        orjson.dumps({"v": 99, "id": "x:1", "kind": "metrics", "run": good.id, "project": "default", "ts": time.time()}),
        orjson.dumps({"v": 1, "id": "x:2", "kind": "explode", "run": good.id, "project": "default", "ts": time.time()}),
        orjson.dumps({**base, "id": "x:3", "m": [0], "x": ["str"]}),
        orjson.dumps({**base, "id": "x:4", "m": [5], "x": [1.0]}),
    ]

    async def send_poison() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for raw in poison:
                await producer.send_and_wait(settings.events_topic, raw, key=good.id.encode())
        finally:
            await producer.stop()

    try:
        good.log("before", 1.0)
        good.flush()
        stack.run(send_poison())
        for i in range(100):
            good.log("after", float(i))
        good.complete()
        wait_until(
            lambda: store.query_rows("SELECT count() FROM metric_points WHERE run_id = {r:String}", {"r": good.id})[0][0] == 101,
            60,
            what="good points stored around the poison",
        )
        wait_until(lambda: proc.stats.dead_letters == len(poison), 30, what="dead letters counted")
    finally:
        stack.run(proc.stop())

    async def read_dlq() -> list[dict]:
        consumer = AIOKafkaConsumer(settings.deadletter_topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        out: list[dict] = []
        try:
            deadline = time.monotonic() + 30
            while len(out) < len(poison) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    out.extend(orjson.loads(m.value) for m in msgs)
        finally:
            await consumer.stop()
        return out

    letters = stack.run(asyncio.wait_for(read_dlq(), 60))
    assert [base64.b64decode(d["value_b64"]) for d in letters] == poison
    reasons = [d["reason"] for d in letters]
    assert "not valid JSON" in reasons[0]
    assert "must be a JSON object" in reasons[1]
    assert "unsupported wire version" in reasons[2]
    assert "unknown event kind" in reasons[3]
    assert "numbers" in reasons[4]
    assert "outside 'names'" in reasons[5]
    assert all(d["topic"] == settings.events_topic and d["offset"] >= 0 for d in letters)
    assert store.query_rows("SELECT status FROM runs FINAL WHERE run_id = {r:String}", {"r": good.id}) == [("Completed",)]


def test_a_run_id_reused_in_another_project_never_touches_the_first_run(home, kafka_bootstrap: str, store: Store, stack: Stack) -> None:
    """Events produced straight to Kafka (no gateway to refuse them) under another project
    with the same run id: each project keeps its own run state and points."""
    settings = new_settings(home, kafka_bootstrap)
    proc = Processor(settings, store, group_id="g-tenants", publish_live=False)
    stack.run(proc.start())
    mine = Experiment("tenant-a", project="team-a", settings=settings).start_logging(name="mine", tags={"owner": "a"})
    now = time.time()
    envelope = {"v": 1, "run": mine.id, "project": "team-b", "ts": now}
    intruder = [
        {**envelope, "id": "b:1", "kind": "run_start", "experiment": "tenant-b", "name": "theirs", "tags": {"owner": "b"}},
        {**envelope, "id": "b:2", "kind": "metrics", "names": ["loss"], "m": [0, 0], "s": [0, 1], "x": [9.0, 9.5]},
        {**envelope, "id": "b:3", "kind": "run_end", "status": "Failed", "error": "not yours"},
    ]

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for event in intruder:
                await producer.send_and_wait(settings.events_topic, orjson.dumps(event), key=mine.id.encode())
        finally:
            await producer.stop()

    try:
        mine.log("loss", 0.5)
        mine.flush()
        stack.run(send())
        mine.log("loss", 0.25)
        mine.flush()

        def runs() -> dict[str, tuple[str, str, str, dict[str, str]]]:
            rows = store.query_rows("SELECT project, name, status, experiment, tags FROM runs FINAL WHERE run_id = {r:String}", {"r": mine.id})
            return {r[0]: (r[1], r[2], r[3], dict(r[4])) for r in rows}

        def points() -> dict[str, list[float]]:
            inner = "SELECT project, value FROM metric_points WHERE run_id = {r:String} ORDER BY step"
            rows = store.query_rows(f"SELECT project, groupArray(value) FROM ({inner}) GROUP BY project", {"r": mine.id})
            return {r[0]: list(r[1]) for r in rows}

        wait_until(lambda: points() == {"team-a": [0.5, 0.25], "team-b": [9.0, 9.5]}, 60, what="both projects' points stored")
        wait_until(lambda: runs().get("team-b", ("",))[1:2] == ("Failed",), 30, what="the other project's run state")
        assert runs()["team-a"] == ("mine", "Running", "tenant-a", {"owner": "a"})
        assert runs()["team-b"] == ("theirs", "Failed", "tenant-b", {"owner": "b"})
    finally:
        mine.complete()
        stack.run(proc.stop())


def test_records_met_again_after_a_re_read_are_dead_lettered_once() -> None:
    """A batch re-read after a rebalance meets its refused records again: one DLQ message each."""

    class _Producer:
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes]] = []
            self.down = False

        async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
            if self.down:
                raise ConnectionError("broker away")
            self.sent.append((topic, value))

    class _Msg:
        def __init__(self, offset: int) -> None:
            self.topic, self.partition, self.offset, self.key, self.value = "ev", 2, offset, None, b"bad"

    producer = _Producer()
    stats = ProcessorStats()
    letters = DeadLetters(producer, "dlq", stats)
    asyncio.run(letters.send([(_Msg(o), "not valid JSON") for o in (2, 3, 4)]))
    asyncio.run(letters.send([(_Msg(o), "not valid JSON") for o in (3, 4, 9)]))  # re-read from 3, then a new one
    assert stats.dead_letters == 4
    assert [orjson.loads(v)["offset"] for _, v in producer.sent] == [2, 3, 4, 9] and {t for t, _ in producer.sent} == {"dlq"}

    producer.down = True
    with pytest.raises(ConnectionError):
        asyncio.run(letters.send([(_Msg(10), "not valid JSON")]))
    producer.down = False
    asyncio.run(letters.send([(_Msg(10), "not valid JSON")]))  # the re-read after the failed send
    assert [orjson.loads(v)["offset"] for _, v in producer.sent][-1] == 10
