"""Analytics over run history: compare, leaderboard, grouped aggregates, read-only SQL.

(Being built; see issue 4.)
"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["analytics"])
