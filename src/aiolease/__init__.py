"""aiolease: production-grade async context managers for pools, transactions and limits."""

from __future__ import annotations

from ._dialects import register_dialect as register_dialect
from ._errors import AioleaseError as AioleaseError
from ._errors import CommitUnknown as CommitUnknown
from ._errors import LimiterUnavailable as LimiterUnavailable
from ._errors import LimitTimeout as LimitTimeout
from ._errors import PoolClosed as PoolClosed
from ._errors import PoolTimeout as PoolTimeout
from ._errors import RateLimitExceeded as RateLimitExceeded
from ._errors import ResourceReleased as ResourceReleased
from ._errors import Rollback as Rollback
from ._errors import TooManyWaiters as TooManyWaiters
from ._errors import TransactionError as TransactionError
from ._errors import WouldBlock as WouldBlock
from ._limits import ConcurrencyLimiter as ConcurrencyLimiter
from ._limits import ConcurrencyLimiterStatistics as ConcurrencyLimiterStatistics
from ._limits import ConcurrencyPermit as ConcurrencyPermit
from ._limits import GroupPermit as GroupPermit
from ._limits import LimitGroup as LimitGroup
from ._limits import RateLimiter as RateLimiter
from ._limits import RateLimiterStatistics as RateLimiterStatistics
from ._limits import RatePermit as RatePermit
from ._pool import Pool as Pool
from ._pool import PoolStatistics as PoolStatistics
from ._transaction import HookError as HookError
from ._transaction import Transaction as Transaction
from ._transaction import atomic as atomic
from ._transaction import run_transaction as run_transaction
from ._transaction import transaction_attempts as transaction_attempts
from .abc import Manager as Manager
from .abc import ResourceInfo as ResourceInfo

__version__ = "0.1.0"

__all__ = [
    "AioleaseError",
    "CommitUnknown",
    "ConcurrencyLimiter",
    "ConcurrencyLimiterStatistics",
    "ConcurrencyPermit",
    "GroupPermit",
    "HookError",
    "LimitGroup",
    "LimitTimeout",
    "LimiterUnavailable",
    "Manager",
    "Pool",
    "PoolClosed",
    "PoolStatistics",
    "PoolTimeout",
    "RateLimitExceeded",
    "RateLimiter",
    "RateLimiterStatistics",
    "RatePermit",
    "ResourceInfo",
    "ResourceReleased",
    "Rollback",
    "TooManyWaiters",
    "Transaction",
    "TransactionError",
    "WouldBlock",
    "atomic",
    "register_dialect",
    "run_transaction",
    "transaction_attempts",
]
