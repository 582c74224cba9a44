"""The exception hierarchy. Every error aiolease raises derives from AioleaseError."""

from __future__ import annotations

__all__ = [
    "AioleaseError",
    "CommitUnknown",
    "LimitTimeout",
    "LimiterUnavailable",
    "PoolClosed",
    "PoolTimeout",
    "RateLimitExceeded",
    "ResourceReleased",
    "Rollback",
    "TooManyWaiters",
    "TransactionError",
    "WouldBlock",
]


class AioleaseError(Exception):
    """Base class of every error raised by aiolease."""


class PoolTimeout(AioleaseError, TimeoutError):
    """No resource could be acquired within the timeout.

    When creation attempts failed while waiting, the last creation error is
    chained as ``__cause__``.
    """


class LimitTimeout(AioleaseError, TimeoutError):
    """A concurrency limit slot could not be acquired within the timeout."""


class LimiterUnavailable(AioleaseError, ConnectionError):
    """A distributed limiter's backend (Redis) cannot be reached or is failing.

    The backend client's own error is chained as ``__cause__``.
    """


class PoolClosed(AioleaseError):
    """The pool is closed (or closing): it hands out nothing more."""


class ResourceReleased(AioleaseError):
    """A pooled connection was used after its lease ended (it may serve another holder now)."""


class TooManyWaiters(AioleaseError):
    """The pool already has ``max_waiting`` tasks queued; back off and retry later."""


class WouldBlock(AioleaseError):
    """A ``*_nowait`` call could not proceed without waiting.

    Attributes:
        retry_after: the least wait, in seconds, before the same call can succeed when one
            is known (a :class:`~aiolease.LimitGroup` whose rate member refuses too, next to
            a full concurrency member), else None: when a slot frees up is not known.
    """

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after = None if retry_after is None else float(retry_after)


class RateLimitExceeded(AioleaseError):
    """The rate limit does not admit the acquisition within the allowed wait.

    Attributes:
        retry_after: seconds after which the same acquisition would be admitted.
    """

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = float(retry_after)
        super().__init__(message or f"rate limit exceeded; retry after {self.retry_after:.3f}s")

    def __reduce__(self) -> tuple[type[RateLimitExceeded], tuple[float, str]]:
        return (type(self), (self.retry_after, str(self)))


class TransactionError(AioleaseError):
    """A transaction could not be committed as asked, or was used incorrectly."""


class CommitUnknown(TransactionError):
    """The connection was lost (or the task cancelled) during COMMIT: the outcome is unknown."""


class Rollback(AioleaseError):
    """Raise inside ``atomic()`` to roll the block back silently.

    The exception is swallowed by the ``atomic`` block it leaves (the innermost
    one), which rolls back (to its savepoint when nested).
    """
