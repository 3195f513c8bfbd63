"""Event ids already stored, per run, in memory that does not grow with the run's length.

Client event ids are "<writer session>:<sequence>" with sequences 1, 2, 3, ... per
session, arriving in order but for retries and spool replays. Per session this keeps
the highest sequence below which every id was seen, plus the few seen above it; other
ids (any string a gateway client chooses) are kept as they are.
"""

from __future__ import annotations

MAX_SEQ = 2**62


class SeenIds:
    __slots__ = ("floor", "above", "other")

    def __init__(self) -> None:
        self.floor: dict[str, int] = {}
        self.above: dict[str, set[int]] = {}
        self.other: set[str] = set()

    @staticmethod
    def _split(event_id: str) -> tuple[str, int] | None:
        session, sep, seq = event_id.rpartition(":")
        if not sep or not seq.isdigit() or len(seq) > 18 or seq.startswith("0"):
            return None
        return session, int(seq)

    def __contains__(self, event_id: object) -> bool:
        if not isinstance(event_id, str):
            return False
        parts = self._split(event_id)
        if parts is None:
            return event_id in self.other
        session, seq = parts
        return seq <= self.floor.get(session, 0) or seq in self.above.get(session, ())

    def add(self, event_id: str) -> None:
        parts = self._split(event_id)
        if parts is None:
            self.other.add(event_id)
            return
        session, seq = parts
        floor = self.floor.get(session, 0)
        if seq <= floor:
            return
        above = self.above.setdefault(session, set())
        above.add(seq)
        while floor + 1 in above:  # close the gap: the run of sequences becomes the new floor
            floor += 1
            above.discard(floor)
        self.floor[session] = floor
        if not above:
            del self.above[session]

    def __len__(self) -> int:
        return sum(self.floor.values()) + sum(len(s) for s in self.above.values()) + len(self.other)
