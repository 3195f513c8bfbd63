"""Admission of user SQL: how many queries run at once, and whose go next.

At most `limit` queries run at once, at most `share` of them one project's, so one
tenant's slow queries leave slots for the others. When a slot frees, the waiting
project with the fewest queries running goes next (first come, first served within
a project and between equals), not simply the oldest waiter: a project that queued
ten queries does not make the next project's one wait behind all ten.
A query that waits longer than its `wait_s` is refused (429) instead of piling up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from runstream.errors import ApiError


class TooManyQueries(ApiError):
    """No slot freed within the wait: the caller should try again later."""

    status = 429


ALL_PROJECTS = "*"  # the scope of a request without keys


class FairGate:
    def __init__(self, limit: int, share: int) -> None:
        if limit < 1 or share < 1:
            raise ValueError("the SQL concurrency limit and per-project share must be at least 1")
        self.limit = limit
        self.share = min(share, limit)
        self.running: Counter[str] = Counter()
        self._waiting: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._seq = itertools.count()

    @property
    def active(self) -> int:
        return sum(self.running.values())

    def waiting(self, project: str | None = None) -> int:
        if project is not None:
            return len(self._waiting.get(project, ()))
        return sum(len(q) for q in self._waiting.values())

    def _eligible(self, project: str) -> bool:
        return self.active < self.limit and self.running[project] < self.share

    @asynccontextmanager
    async def slot(self, project: str | None, wait_s: float) -> AsyncIterator[None]:
        key = ALL_PROJECTS if project is None else project
        await self._acquire(key, wait_s)
        try:
            yield
        finally:
            self._release(key)

    async def _acquire(self, key: str, wait_s: float) -> None:
        if self._eligible(key) and not self._waiting.get(key):
            self.running[key] += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._seq), future)
        self._waiting.setdefault(key, deque()).append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), wait_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if future.done() and not future.cancelled():
                self._release(key)  # granted just as the wait ended: give the slot on
            else:
                future.cancel()
                self._forget(key, entry)
            if isinstance(exc, TimeoutError):
                raise TooManyQueries(
                    f"no SQL slot freed within {wait_s:g} s ({self.running[key]} of this project's queries running,"
                    f" {self.active} of {self.limit} in all); try again"
                ) from None
            raise

    def _forget(self, key: str, entry: tuple[int, asyncio.Future[None]]) -> None:
        queue = self._waiting.get(key)
        if queue is not None and entry in queue:
            queue.remove(entry)
            if not queue:
                del self._waiting[key]

    def _release(self, key: str) -> None:
        self.running[key] -= 1
        if self.running[key] <= 0:
            del self.running[key]
        self._dispatch()

    def _dispatch(self) -> None:
        while self.active < self.limit:
            candidates = [(self.running[k], q[0][0], k) for k, q in self._waiting.items() if q and self.running[k] < self.share]
            if not candidates:
                return
            _, _, key = min(candidates)
            queue = self._waiting[key]
            _, future = queue.popleft()
            if not queue:
                del self._waiting[key]
            if future.cancelled():
                continue
            self.running[key] += 1
            future.set_result(None)
