"""aiolease: production-grade async context managers for pools, transactions and limits."""

from __future__ import annotations

from ._errors import AioleaseError as AioleaseError
from ._errors import CommitUnknown as CommitUnknown
from ._errors import LimitTimeout as LimitTimeout
from ._errors import PoolClosed as PoolClosed
from ._errors import PoolTimeout as PoolTimeout
from ._errors import RateLimitExceeded as RateLimitExceeded
from ._errors import Rollback as Rollback
from ._errors import TooManyWaiters as TooManyWaiters
from ._errors import TransactionError as TransactionError
from ._errors import WouldBlock as WouldBlock
from ._pool import Pool as Pool
from ._pool import PoolStatistics as PoolStatistics
from .abc import Manager as Manager
from .abc import ResourceInfo as ResourceInfo

__version__ = "0.1.0"

__all__ = [
    "AioleaseError",
    "CommitUnknown",
    "LimitTimeout",
    "Manager",
    "Pool",
    "PoolClosed",
    "PoolStatistics",
    "PoolTimeout",
    "RateLimitExceeded",
    "ResourceInfo",
    "Rollback",
    "TooManyWaiters",
    "TransactionError",
    "WouldBlock",
]
