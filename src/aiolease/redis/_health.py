"""Whether Redis can answer a limiter: the errors that mean it cannot, and the cool-down.

:class:`Health` remembers that Redis failed and spaces out the next attempts (no retry storm):
one probe after each cool-down. :func:`unavailable` is the error a limiter raises meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Final

from redis import exceptions as _rexc

from .._errors import LimiterUnavailable
from .._logs import get_logger
from .._redact import redact

__all__ = [
    "CLOCK_TICK",
    "COOLDOWN_MAX",
    "COOLDOWN_MIN",
    "UNAVAILABLE",
    "Health",
    "describe",
    "unavailable",
]

logger = get_logger("aiolease.redis")

#: Errors meaning "Redis could not answer" (as opposed to "Redis answered no"). A timeout after
#: the script was sent is *indeterminate* - the script may have run - so it is never re-sent.
#: ``OOM`` (maxmemory reached with ``noeviction``) counts too: Redis cannot keep the limit's
#: state until memory frees up (the script did not write: its first write was refused).
UNAVAILABLE: Final = (
    _rexc.ConnectionError,
    _rexc.TimeoutError,
    TimeoutError,
    OSError,
    _rexc.ReadOnlyError,
    _rexc.ClusterDownError,
    _rexc.TryAgainError,
    _rexc.BusyLoadingError,
    _rexc.OutOfMemoryError,
)


#: After Redis was unavailable, calls within this cool-down (doubling per consecutive failure)
#: are answered without contacting Redis; then ONE call probes it (no retry storm).
COOLDOWN_MIN: Final = 0.1
COOLDOWN_MAX: Final = 1.0

#: How early a cool-down may be found over. A loop's clock and timers can be that coarse:
#: uvloop's ``time()`` counts whole milliseconds, and its timers are due a whole number of
#: them (the delay rounded to the nearest) after the one they were armed in. So a caller that
#: slept :meth:`Health.retry_after` can wake with ``loop.time()`` short of the cool-down's
#: end: by up to half a millisecond, or by a hair when ``failure time + cool-down`` rounds
#: (as a float) past the millisecond the timer wakes in. Without the allowance that caller
#: would find the cool-down still on, be answered without Redis (by the failure that started
#: it), and only the next call, a millisecond later, would probe.
CLOCK_TICK: Final = 0.001


class Health:
    """Whether Redis answered lately, and when one call may try it again.

    After a failure, calls within the cool-down (0.1 s doubling to 1 s per consecutive failure)
    are answered at once without contacting Redis; after it, ONE call probes Redis while the
    others keep being answered the same way; the first success ends the outage. The calls
    that were in flight together when Redis failed are one failure: only a call sent after
    the last failure (the probe) doubles the cool-down.
    """

    __slots__ = (
        "cooldown",
        "down_since",
        "errors",
        "failed_at",
        "last_error",
        "meanwhile",
        "probing",
        "until",
        "what",
    )

    def __init__(self, what: str, meanwhile: str = "") -> None:
        self.what = what  # the limiter, for the log lines ("rate limiter 'api'")
        self.meanwhile = meanwhile  # how it answers while Redis is down, for the log line
        self.cooldown = 0.0
        self.until = -math.inf
        self.probing = False
        self.errors = 0
        self.failed_at = -math.inf  # when the cool-down in force began
        self.last_error: BaseException | None = None
        self.down_since: float | None = None

    def admit(self, now: float) -> bool | None:
        """Whether a call may contact Redis now: None if not (it is answered without Redis),
        else whether it is the probe. The probe, and only it, calls :meth:`end_probe` when it
        ends: a call sent before the outage can end while the probe is still out, and must
        not let another call probe meanwhile.

        The cool-down counts as over within :data:`CLOCK_TICK` of its end: a caller that
        waited :meth:`retry_after` by the loop's timers is the probe, as that promises.
        """
        if self.down_since is None:
            return False
        if now < self.until - CLOCK_TICK or self.probing:
            return None
        self.probing = True
        return True

    def end_probe(self) -> None:
        """The probe has ended (answered or not): the next call after the cool-down probes."""
        self.probing = False

    def ok(self, now: float) -> None:
        if self.down_since is not None:
            logger.info(
                "Redis answers again for %s, after %.1fs unavailable",
                self.what,
                now - self.down_since,
            )
        self.cooldown = 0.0
        self.down_since = None

    def failed(self, exc: BaseException, now: float, sent: float | None = None) -> None:
        """A call sent at ``sent`` (loop time; None: not known, a background call) failed:
        one WARNING when this starts an outage (none while it lasts). A call sent before the
        cool-down in force began failed in the same failure and leaves it as it is."""
        if self.down_since is None:
            logger.warning(
                "Redis unavailable for %s (%s: %s)%s",
                self.what,
                type(exc).__name__,
                exc,
                self.meanwhile,
            )
        self.errors += 1
        self.last_error = exc
        if self.down_since is not None and (sent is None or sent <= self.failed_at):
            return
        self.cooldown = min(COOLDOWN_MAX, max(COOLDOWN_MIN, self.cooldown * 2))
        self.until = now + self.cooldown
        self.failed_at = now
        if self.down_since is None:
            self.down_since = now

    def background_failed(self, exc: BaseException) -> int:
        """A background call or a renewal failed with ``exc``: the level of its line. An
        unavailable Redis is an outage, as for a call of an acquisition (its start logged
        once by :meth:`failed`), so the line itself is DEBUG; another error is a WARNING
        unless an outage is known."""
        if isinstance(exc, UNAVAILABLE):
            self.failed(exc, asyncio.get_running_loop().time())
        return logging.DEBUG if self.down_since is not None else logging.WARNING

    def retry_after(self, now: float) -> float:
        """Seconds from ``now`` until a call may probe Redis (at least 1 ms)."""
        return max(self.until - now, 0.001)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error, for messages and logs (secrets redacted): redis-py 8's
    ``repr()`` of its errors is ``network:TimeoutError``, without the message that says
    what happened."""
    message = redact(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def unavailable(what: str, exc: BaseException | None, detail: str = "") -> LimiterUnavailable:
    """The error a limiter raises when Redis cannot answer (redis-py's error as the cause)."""
    reason = f": {type(exc).__name__}: {redact(str(exc))}" if exc is not None else ""
    err = LimiterUnavailable(f"Redis unavailable for {what}{detail}{reason}")
    err.__cause__ = exc
    return err
