"""Local rate and concurrency limits (see ``docs/limits.md``)."""

from __future__ import annotations

from ._concurrency import ConcurrencyLimiter as ConcurrencyLimiter
from ._concurrency import ConcurrencyLimiterStatistics as ConcurrencyLimiterStatistics
from ._concurrency import ConcurrencyPermit as ConcurrencyPermit
from ._group import GroupPermit as GroupPermit
from ._group import LimitGroup as LimitGroup
from ._rate import RateLimiter as RateLimiter
from ._rate import RateLimiterStatistics as RateLimiterStatistics
from ._rate import RatePermit as RatePermit

__all__ = [
    "ConcurrencyLimiter",
    "ConcurrencyLimiterStatistics",
    "ConcurrencyPermit",
    "GroupPermit",
    "LimitGroup",
    "RateLimiter",
    "RateLimiterStatistics",
    "RatePermit",
]
