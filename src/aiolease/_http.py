"""The client side of the HTTP integrations, shared by ``aiolease.httpx`` and ``aiolease.aiohttp``.

Three pieces, none of which imports an HTTP library:

* :func:`retry_delay` reads how long a 429/503 response asks the client to wait
  (``Retry-After`` as delta-seconds or HTTP-date, the IETF ``RateLimit`` field
  in its draft-08+ and draft-07 syntaxes, or the older ``RateLimit-Reset``).
* :class:`Pauses` holds, per key, the loop-clock instant until which nothing
  may be sent; every caller using the same client waits it out.
* :class:`RetryPolicy` runs one request: acquire the limits under the key, wait
  out a pause, send; on a 429/503 that says how long to wait, pause the key
  (locally and in the limiter, so a Redis limiter pauses every process) and
  retry up to ``retries`` times. Each client library supplies only how to send
  and how to read and discard a response.
"""

from __future__ import annotations

import asyncio
import calendar
import email.utils
import inspect
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from ._logs import get_logger

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "HeaderGetter",
    "Pauses",
    "RetryPolicy",
    "check_key",
    "retry_delay",
]

logger = get_logger("aiolease.http")

#: Methods RFC 9110 defines as idempotent: retried after a 429/503 by default.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: The statuses whose waiting instructions pause the key.
RETRY_STATUSES = frozenset({429, 503})

#: Above this a ``RateLimit-Reset`` value is read as a Unix time, not a delay
#: (some servers send the epoch form); ten years of seconds.
_EPOCH_THRESHOLD = 10 * 365 * 86400.0
_DELTA_MAX = 2.0**31
_DELTA = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
#: One member of a Structured Fields list (RFC 8941): commas inside quoted strings kept.
_MEMBER = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^,"])+')


def check_key(key: object) -> None:
    """The adapters' ``key`` option: a function of the request (checked at the call)."""
    if not callable(key):
        raise TypeError(f"key={key!r}: expected a function of the request returning the key")


class HeaderGetter(Protocol):
    """``get(name)``: the response's field value (several lines joined by ", ") or None."""

    def __call__(self, name: str) -> str | None: ...


def _number(text: str) -> float | None:
    m = _DELTA.match(text)
    # Capped at 2**31 s as RFC 9111 (1.2.2) caps delta-seconds: too many digits for a float
    # would read as inf, which a limiter refuses to pause for while the key stayed paused here
    # for good (a later request waited forever, whatever its timeout).
    return min(float(m.group(1)), _DELTA_MAX) if m else None


def _http_date(text: str) -> float | None:
    """An HTTP-date (IMF-fixdate, RFC 850 or asctime form) as a Unix time, or None."""
    try:
        parts = email.utils.parsedate_tz(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parts is None:
        return None
    # An HTTP-date is always GMT; a missing zone is read as GMT too.
    return float(calendar.timegm(parts[:9])) - (parts[9] or 0)


def _reference_time(header: HeaderGetter) -> float:
    """The server's "now" for turning an HTTP-date into a delay.

    The response's own ``Date`` is used when present, so a client whose clock is
    off still waits the time the server meant; otherwise the wall clock (the
    only clock an absolute date can be compared with).
    """
    date = header("Date")
    at = _http_date(date) if date else None
    return at if at is not None else time.time()


def _retry_after(value: str, header: HeaderGetter) -> float | None:
    seconds = _number(value)
    if seconds is not None:
        return seconds
    at = _http_date(value)
    if at is None:
        return None
    return max(0.0, at - _reference_time(header))


def _params(member: str) -> tuple[str, dict[str, str]]:
    name, *params = (p.strip() for p in member.split(";"))
    found: dict[str, str] = {}
    for p in params:
        k, sep, v = p.partition("=")
        found[k.strip().lower()] = v.strip() if sep else "?1"
    return name, found


def _ratelimit(value: str) -> float | None:
    """The wait a ``RateLimit`` field implies: the longest reset among exhausted quotas.

    draft-ietf-httpapi-ratelimit-headers-08 and later: a list of items
    ``"policy";r=<remaining>;t=<reset seconds>``. draft-07: one dictionary
    ``limit=10, remaining=0, reset=5``.
    """
    members = [m.strip() for m in _MEMBER.findall(value) if m.strip()]
    if not members:
        return None
    if all("=" in _params(m)[0] for m in members):  # draft-07 dictionary
        fields = dict(_params(m)[0].partition("=")[::2] for m in members)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        reset = _number(fields.get("reset", ""))
        remaining = _number(fields.get("remaining", "0"))
        return reset if reset is not None and remaining == 0 else None
    resets: list[float] = []
    for m in members:
        _, params = _params(m)
        reset = _number(params.get("t", ""))
        remaining = _number(params.get("r", "0"))
        if reset is not None and remaining == 0:
            resets.append(reset)
    return max(resets) if resets else None


def _ratelimit_reset(value: str, header: HeaderGetter) -> float | None:
    """draft-06 and earlier: ``RateLimit-Reset: <delta-seconds>`` (an epoch value is tolerated)."""
    seconds = _number(value.split(",")[0])
    if seconds is None:
        return None
    if seconds > _EPOCH_THRESHOLD:
        return max(0.0, seconds - _reference_time(header))
    return seconds


def retry_delay(header: HeaderGetter) -> float | None:
    """How long a throttled response asks the client to wait, in seconds, or None.

    ``Retry-After`` takes precedence (as the RateLimit draft requires), then
    ``RateLimit`` (a quota with nothing remaining), then ``RateLimit-Reset``.
    Malformed values are ignored.

    Args:
        header: returns a response field's value by name (case-insensitive), or None.
    """
    value = header("Retry-After")
    if value:
        seconds = _retry_after(value, header)
        if seconds is not None:
            return seconds
    value = header("RateLimit")
    if value:
        seconds = _ratelimit(value)
        if seconds is not None:
            return seconds
    value = header("RateLimit-Reset")
    if value:
        return _ratelimit_reset(value, header)
    return None


class Pauses:
    """Per key, the loop-clock instant until which no request may be sent.

    Expired entries are dropped when read, and all of them whenever the map
    has doubled since the last sweep, so it holds about the keys paused now.
    """

    __slots__ = ("_sweep_mark", "_until")

    def __init__(self) -> None:
        self._until: dict[Hashable, float] = {}
        self._sweep_mark = 64

    def pause(self, key: Hashable, seconds: float, now: float) -> None:
        """Hold ``key`` until ``now + seconds``; a pause in force is never shortened."""
        until = now + seconds
        if until > self._until.get(key, -math.inf):
            self._until[key] = until
        if len(self._until) >= self._sweep_mark:
            for k in [k for k, u in self._until.items() if u <= now]:
                del self._until[k]
            self._sweep_mark = max(64, 2 * len(self._until))

    def remaining(self, key: Hashable, now: float) -> float:
        """Seconds until ``key`` may send again (0 when it is not paused)."""
        until = self._until.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._until[key]
            return 0.0
        return until - now

    async def wait(self, key: Hashable) -> None:
        """Sleep until ``key`` is not paused (a pause extended meanwhile is waited out too).

        One sleep per pause in force: a sleep ends exactly at the deadline it read.
        """
        loop = asyncio.get_running_loop()
        while True:
            left = self.remaining(key, loop.time())
            if left <= 0:
                return
            await asyncio.sleep(left)


R = TypeVar("R")


class RetryPolicy(Generic[R]):
    """How one client sends a request under ``limits`` and reacts to 429/503.

    Generic over the client library's response type ``R``; the adapters pass
    the library-specific operations to :meth:`send`.
    """

    __slots__ = ("_pauses", "limits", "max_wait", "retries", "retry_methods", "timeout")

    def __init__(
        self,
        limits: Any,
        *,
        retries: int,
        retry_methods: Collection[str] | None,
        max_wait: float | None,
        timeout: float | None,
    ) -> None:
        if not callable(getattr(limits, "acquire", None)):
            raise TypeError(
                f"limits={limits!r} has no acquire(): pass an aiolease limiter "
                "(RateLimiter, ConcurrencyLimiter, LimitGroup or a Redis limiter)"
            )
        if isinstance(retries, bool) or not isinstance(retries, int):
            raise TypeError(f"retries={retries!r}: expected an int >= 0")
        if retries < 0:
            raise ValueError(f"retries={retries!r}: expected an int >= 0")
        for name, value in (("max_wait", max_wait), ("timeout", timeout)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}={value!r}: expected a number >= 0 or None")
            if not value >= 0:
                raise ValueError(f"{name}={value!r}: expected a number >= 0 or None")
        allowed = IDEMPOTENT_METHODS
        if retry_methods is not None:
            names = (
                tuple(retry_methods)
                if isinstance(retry_methods, Iterable) and not isinstance(retry_methods, str)
                else None
            )
            if names is None or not all(isinstance(m, str) for m in names):
                raise TypeError(
                    f"retry_methods={retry_methods!r}: expected a collection of method names, "
                    'e.g. {"GET", "POST"}'
                )
            allowed = frozenset(m.upper() for m in names)
        self.limits = limits
        self.retries = retries
        self.retry_methods = allowed
        self.max_wait = max_wait
        self.timeout = timeout
        self._pauses = Pauses()

    def paused_for(self, key: Hashable) -> float:
        """Seconds until ``key`` may send again through this client (0 when not paused)."""
        return self._pauses.remaining(key, asyncio.get_running_loop().time())

    async def pause(self, key: Hashable, seconds: float) -> None:
        """Pause ``key`` here and in the limiter (a Redis limiter shares it between processes)."""
        self._pauses.pause(key, seconds, asyncio.get_running_loop().time())
        limiter_pause = getattr(self.limits, "pause", None)
        if limiter_pause is None:
            return
        try:
            result = limiter_pause(seconds, key)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # The local pause holds whatever the limiter's backend does.
            logger.warning("could not pause %r in %r", key, self.limits, exc_info=True)

    async def send(
        self,
        key: Hashable,
        method: str,
        replayable: bool,
        attempt: Callable[[], Awaitable[R]],
        status: Callable[[R], int],
        header: Callable[[R], HeaderGetter],
        discard: Callable[[R], Awaitable[None]],
        close: Callable[[R], Awaitable[None]],
    ) -> R:
        """Send a request under the limits; pause and retry on a throttled response.

        Args:
            key: the limiter key (and the key paused on a 429/503).
            method: the request method (retries only for ``retry_methods``).
            replayable: whether the request body can be sent again.
            attempt: sends the request once and returns the response head.
            status: the response's status code.
            header: the response's field reader.
            discard: reads and releases a response that will be retried.
            close: releases a response without reading it.

        Raises:
            RateLimitExceeded, LimitTimeout: the limits could not admit the
                request within ``timeout``.
        """
        retry_ok = replayable and method.upper() in self.retry_methods
        tries = 0
        while True:
            async with self.limits.acquire(key=key, timeout=self.timeout):
                # A pause that began while this request waited for the limits
                # holds it too: nothing is sent into a window the server closed.
                await self._pauses.wait(key)
                response = await attempt()
            if status(response) not in RETRY_STATUSES:
                return response
            delay = retry_delay(header(response))
            if delay is None:
                return response
            try:
                await self.pause(key, delay)
            except BaseException:
                # Cancelled while a Redis limiter records the pause: the response
                # is nobody's now, so it is closed (shielded) before the error goes on.
                await asyncio.shield(close(response))
                raise
            if (
                not retry_ok
                or tries >= self.retries
                or (self.max_wait is not None and delay > self.max_wait)
            ):
                return response
            tries += 1
            await discard(response)
