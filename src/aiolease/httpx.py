"""httpx integration: a transport that rate-limits requests and honours 429/503.

Install with ``pip install 'aiolease[httpx]'``. For example:

```python
limits = aiolease.LimitGroup(aiolease.RateLimiter(10), aiolease.ConcurrencyLimiter(5))
async with httpx.AsyncClient(transport=aiolease.httpx.LimitedTransport(limits)) as client:
    await client.get("https://api.example.com/items")
```

The pause, parsing and retry logic is shared with ``aiolease.aiohttp``
(``aiolease._http``); this module only says how httpx sends a request and
reads a response.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable
from typing import Any

from ._http import HeaderGetter, RetryPolicy, check_key, host_key
from ._redact import redact

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("aiolease.httpx needs httpx: pip install 'aiolease[httpx]'") from exc

__all__ = ["LimitedTransport", "request_host"]


def request_host(request: httpx.Request) -> str:
    """The default key: the request's host name (``api.example.com``); an IPv6 address in
    its canonical form (``[0:0::1]`` and ``[::1]`` are one key, ``::1``)."""
    return host_key(request.url.host)


def _header(response: httpx.Response) -> HeaderGetter:
    headers = response.headers

    def get(name: str) -> str | None:
        value: str | None = headers.get(name)  # several lines of one field come joined by ", "
        return value

    return get


async def _close(response: httpx.Response) -> None:
    await response.aclose()


class LimitedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request under ``limits`` and honours 429/503.

    Each request acquires ``limits`` under ``key(request)`` (default: the
    request's host) before it is sent; a concurrency slot is held until the
    response head has arrived. A 429 or 503 response with ``Retry-After``
    (delta-seconds or HTTP-date), ``RateLimit`` or ``RateLimit-Reset`` pauses
    that key for every request through this transport (and, for a limiter with
    ``pause()``, in the limiter: a Redis limiter pauses every process), and the
    request is sent again after the pause, up to ``retries`` times. The last
    response is returned as it is when retries are exhausted, the method is
    not retried, or the pause is longer than ``max_wait``; a streamed body is
    never resent. A request still waiting when the transport is closed raises
    ``RuntimeError`` unsent.
    From a key's second throttling episode on (from its first, when nothing
    had been sent on the key for the announced wait before), its requests are
    also paced no faster than the server has shown it accepts (only ever
    slower than ``limits``; see :meth:`pace`).

    Args:
        limits: any aiolease limiter: ``RateLimiter``, ``ConcurrencyLimiter``,
            ``LimitGroup``, ``aiolease.redis.RedisRateLimiter`` or
            ``RedisConcurrencyLimiter``.
        wrapped: the transport that sends (default ``httpx.AsyncHTTPTransport()``);
            closed with this one.
        key: ``key(request)`` returns the limiter key (any hashable); a plain
            function, not ``async def``.
        retries: how many times a throttled request is sent again, an int >= 0.
        retry_methods: the methods retried (default: the idempotent ones,
            GET HEAD OPTIONS TRACE PUT DELETE). A 429 means the server did not
            process the request, so ``{"GET", "POST"}`` is often safe too.
        max_wait: the longest pause (seconds) waited out, or None. A longer one holds
            the key for ``max_wait`` or 60 s, whichever is longer (at most the pause):
            its requests raise ``RateLimitExceeded`` at once, unsent, then the next
            asks the server again. ``limits`` is paused for ``max_wait`` only (a Redis
            limiter's other processes then learn the rest from their own answer). A slot
            of the key's learned pace is waited for at most ``max_wait`` too (then
            ``RateLimitExceeded``, unsent).
        timeout: the longest wait for ``limits`` per attempt (seconds), or None;
            past it the limiter's ``RateLimitExceeded``/``LimitTimeout`` is raised. It
            bounds the wait for the key's pause and learned pace too (then
            ``RateLimitExceeded``, the request unsent).

    Raises:
        TypeError: ``limits`` is a class or has no ``acquire()``, ``key`` is an async function
            or cannot be called with the request alone,
            or an option has the wrong type.
        ValueError: an option is out of range.
    """

    def __init__(
        self,
        limits: Any,
        *,
        wrapped: httpx.AsyncBaseTransport | None = None,
        key: Callable[[httpx.Request], Hashable] = request_host,
        retries: int = 2,
        retry_methods: Collection[str] | None = None,
        max_wait: float | None = 60.0,
        timeout: float | None = None,
    ) -> None:
        check_key(key)
        self._policy: RetryPolicy[httpx.Response] = RetryPolicy(
            limits, retries=retries, retry_methods=retry_methods, max_wait=max_wait, timeout=timeout
        )
        if wrapped is not None and not callable(getattr(wrapped, "handle_async_request", None)):
            raise TypeError(
                f"wrapped={wrapped!r}: expected an httpx.AsyncBaseTransport, such as "
                "httpx.AsyncHTTPTransport(...), or None for the default one"
            )
        self._wrapped = wrapped if wrapped is not None else httpx.AsyncHTTPTransport()
        self._key = key
        self._closed = False

    @property
    def limits(self) -> Any:
        """The limiter the transport acquires."""
        return self._policy.limits

    def paused_for(self, key: Hashable) -> float:
        """Seconds until ``key`` may send again (0 when it is not paused)."""
        return self._policy.paused_for(key)

    def pace(self, key: Hashable) -> float | None:
        """The rate (requests per second) learned for ``key`` from its 429s, or None.

        From a key's second throttling episode on (from its first, when nothing
        had been sent on the key for the announced wait before), its requests are
        paced no faster than the server has shown it accepts, and only ever slower
        than ``limits``.
        """
        return self._policy.pace(key)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` under the limits (see the class docstring)."""
        # A streaming body (an async generator) can be read only once.
        replayable = isinstance(request.stream, httpx.ByteStream)
        return await self._policy.send(
            self._key(request),
            request.method,
            lambda: replayable,
            lambda: self._attempt(request),
            _status,
            _header,
            _close,
        )

    async def _attempt(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            # Closed while the request waited (for the limits or a pause): sent now, it
            # would open a connection on a closed pool that nothing closes.
            raise RuntimeError(
                f"cannot send {request.method} {redact(str(request.url))}: the transport (its "
                "client) was closed while the request waited"
            )
        return await self._wrapped.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the wrapped transport; a request still waiting then raises ``RuntimeError``."""
        self._closed = True
        await self._wrapped.aclose()

    def __repr__(self) -> str:
        return f"<LimitedTransport {self._policy.limits!r} over {self._wrapped!r}>"


def _status(response: httpx.Response) -> int:
    return response.status_code
