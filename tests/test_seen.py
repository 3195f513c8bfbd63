"""SeenIds (no services): exact membership in memory that does not grow with a run's length."""

from __future__ import annotations

import random

from runstream.processor.seen import SeenIds


def test_in_order_ids_collapse_to_one_floor_per_session() -> None:
    seen = SeenIds()
    for seq in range(1, 100_001):
        seen.add(f"abc:{seq}")
    assert "abc:1" in seen and "abc:100000" in seen and "abc:100001" not in seen and "other:1" not in seen
    assert seen.floor == {"abc": 100_000} and not seen.above and len(seen) == 100_000


def test_out_of_order_and_replayed_ids_are_exact() -> None:
    seen, plain = SeenIds(), set()
    rng = random.Random(7)
    ids = [f"s{rng.randrange(3)}:{rng.randrange(1, 400)}" for _ in range(2_000)]
    ids += ["gateway-id-1", "x:007", "no-colon", "s1:", "s1:abc", "s2:99999999999999999999"]
    for eid in ids:
        assert (eid in seen) == (eid in plain), eid
        seen.add(eid)
        plain.add(eid)
    probes = [f"s{i}:{n}" for i in range(4) for n in range(0, 450)] + ["gateway-id-1", "gateway-id-2", "x:7", "x:007"]
    for eid in probes:
        assert (eid in seen) == (eid in plain), eid
    assert sum(len(s) for s in seen.above.values()) < len(plain)
