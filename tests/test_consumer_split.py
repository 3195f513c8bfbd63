"""How the processor cuts what it polled into batches of bounded size (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition

from runstream.processor.intake import split


@dataclass
class Msg:
    offset: int
    value: bytes


def _polled(sizes: dict[int, list[int]]) -> dict[TopicPartition, list[Msg]]:
    return {TopicPartition("t", p): [Msg(i, b"x" * n) for i, n in enumerate(ns)] for p, ns in sizes.items()}


def test_a_batch_takes_the_partitions_heads_in_turn_up_to_the_budget() -> None:
    data = _polled({0: [40] * 10, 1: [40] * 2, 2: [40] * 10})
    batch, rest = split(data, 400)
    sizes = {tp.partition: sum(len(m.value) for m in ms) for tp, ms in batch.items()}
    assert sum(sizes.values()) == 400 and sizes == {0: 160, 1: 80, 2: 160}  # the short partition is not starved
    for tp in data:  # each partition: a prefix in the batch, the rest after it, offsets in order and none lost
        got = [m.offset for m in batch.get(tp, [])] + [m.offset for m in rest.get(tp, [])]
        assert got == [m.offset for m in data[tp]]
    assert TopicPartition("t", 1) not in rest


def test_a_record_larger_than_the_budget_still_makes_a_batch_of_its_own() -> None:
    batch, rest = split(_polled({0: [1000, 10], 1: [10]}), 100)
    assert [m.offset for m in batch[TopicPartition("t", 0)]] == [0] and TopicPartition("t", 1) not in batch
    assert [m.offset for m in rest[TopicPartition("t", 0)]] == [1] and [m.offset for m in rest[TopicPartition("t", 1)]] == [0]


def test_what_fits_is_taken_whole() -> None:
    data = _polled({0: [10, 20], 3: [30]})
    batch, rest = split(data, 60)
    assert batch == data and rest == {}
