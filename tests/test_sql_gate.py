"""api.sql_gate: the limit, the per-project share and who goes next (pure asyncio, no services)."""

from __future__ import annotations

import asyncio

import pytest

from runstream.api.sql_gate import FairGate, TooManyQueries


async def _hold(gate: FairGate, project: str, release: asyncio.Event, started: list[str]) -> None:
    async with gate.slot(project, wait_s=5):
        started.append(project)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_project_gets_at_most_its_share_and_others_still_get_slots() -> None:
    async def main() -> None:
        gate = FairGate(limit=4, share=2)
        release = asyncio.Event()
        started: list[str] = []
        tasks = [asyncio.create_task(_hold(gate, "a", release, started)) for _ in range(3)]
        await _settle()
        assert started == ["a", "a"] and gate.waiting("a") == 1
        tasks.append(asyncio.create_task(_hold(gate, "b", release, started)))
        await _settle()
        assert started == ["a", "a", "b"] and gate.active == 3
        release.set()
        await asyncio.gather(*tasks)
        assert started == ["a", "a", "b", "a"] and gate.active == 0 and gate.waiting() == 0

    asyncio.run(main())


def test_a_freed_slot_goes_to_the_waiting_project_with_fewest_running() -> None:
    async def main() -> None:
        gate = FairGate(limit=2, share=2)
        first, rest = asyncio.Event(), asyncio.Event()
        started: list[str] = []
        holders = [asyncio.create_task(_hold(gate, "a", first, started)), asyncio.create_task(_hold(gate, "a", rest, started))]
        await _settle()
        # a queues five more before b queues one: b still goes first when a slot frees.
        waiters = [asyncio.create_task(_hold(gate, "a", rest, started)) for _ in range(5)]
        await _settle()
        waiters.append(asyncio.create_task(_hold(gate, "b", rest, started)))
        await _settle()
        first.set()
        await _settle()
        assert started == ["a", "a", "b"]
        rest.set()
        await asyncio.gather(*holders, *waiters)
        assert started.count("a") == 7 and gate.active == 0

    asyncio.run(main())


def test_a_query_that_waits_longer_than_its_bound_is_refused_and_leaves_no_trace() -> None:
    async def main() -> None:
        gate = FairGate(limit=1, share=1)
        release = asyncio.Event()
        started: list[str] = []
        holder = asyncio.create_task(_hold(gate, "a", release, started))
        await _settle()
        with pytest.raises(TooManyQueries) as refused:
            async with gate.slot("b", wait_s=0.05):
                pass
        assert refused.value.status == 429
        assert gate.waiting() == 0
        # A cancelled waiter (the client went away) gives up its place too.
        cancelled = asyncio.create_task(_hold(gate, "c", release, started))
        await _settle()
        cancelled.cancel()
        await _settle()
        assert gate.waiting() == 0
        release.set()
        await holder
        async with gate.slot(None, wait_s=1):
            assert gate.active == 1
        assert gate.active == 0 and started == ["a"]

    asyncio.run(main())


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairGate(limit=0, share=1)
