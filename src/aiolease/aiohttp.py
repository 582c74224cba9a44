"""aiohttp integration: a client middleware (aiohttp >= 3.12) that rate-limits and honours 429/503.

Install with ``pip install 'aiolease[aiohttp]'``. For example:

```python
limits = aiolease.LimitGroup(aiolease.RateLimiter(10), aiolease.ConcurrencyLimiter(5))
async with aiohttp.ClientSession(middlewares=[aiolease.aiohttp.limited(limits)]) as session:
    async with session.get("https://api.example.com/items") as response: ...
```

The pause, parsing and retry logic is shared with ``aiolease.httpx``
(``aiolease._http``); this module only says how aiohttp sends a request and
reads a response.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterator
from typing import Any

from ._http import HeaderGetter, RetryPolicy, check_key, host_key
from ._redact import redact

try:
    import aiohttp
    from aiohttp.payload import AsyncIterablePayload, IOBasePayload, Payload, StreamReaderPayload
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("aiolease.aiohttp needs aiohttp: pip install 'aiolease[aiohttp]'") from exc

if not hasattr(aiohttp, "ClientMiddlewareType"):  # pragma: no cover - old aiohttp only
    raise ImportError(
        f"aiolease.aiohttp needs aiohttp >= 3.12 (client middlewares), found {aiohttp.__version__}:"
        " pip install 'aiolease[aiohttp]'"
    )

# Bodies sent only once: an async iterable or a stream reader always; a file too on an
# aiohttp that does not mark a spent payload ``consumed`` (before payload reuse, it
# closes a file body once sent: resent, the request fails on the closed file).
_SENT_ONCE: tuple[type, ...] = (AsyncIterablePayload, StreamReaderPayload)
if not hasattr(Payload, "consumed"):
    _SENT_ONCE += (IOBasePayload,)

__all__ = ["limited", "request_host"]


def _payloads(body: object) -> Iterator[object]:
    """``body`` and, for a multipart body, each of its parts (nested ones too): a multipart
    body holding a part sent only once is sent only once itself."""
    yield body
    if isinstance(body, aiohttp.MultipartWriter):
        for part, *_ in body:
            yield from _payloads(part)


def request_host(request: aiohttp.ClientRequest) -> str:
    """The default key: the request's host name (``api.example.com``); an IPv6 address in
    its canonical form (``[0:0::1]`` and ``[::1]`` are one key, ``::1``)."""
    return host_key(request.url.host or "")


def _status(response: aiohttp.ClientResponse) -> int:
    return response.status


def _header(response: aiohttp.ClientResponse) -> HeaderGetter:
    headers = response.headers

    def get(name: str) -> str | None:
        values = headers.getall(name, ())
        return ", ".join(values) if values else None

    return get


async def _close(response: aiohttp.ClientResponse) -> None:
    response.release()


class _Limited:
    """The middleware object :func:`limited` returns (callable as aiohttp expects)."""

    __slots__ = ("_key", "_policy")

    def __init__(
        self,
        policy: RetryPolicy[aiohttp.ClientResponse],
        key: Callable[[aiohttp.ClientRequest], Hashable],
    ) -> None:
        self._policy = policy
        self._key = key

    @property
    def limits(self) -> Any:
        """The limiter the middleware acquires."""
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

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        once = any(isinstance(p, _SENT_ONCE) for p in _payloads(request.body))

        def replayable() -> bool:
            # A file that cannot seek back (a pipe) is spent by the first attempt: sent
            # again, the body would go out empty. aiohttp marks such a payload consumed.
            return not once and not any(
                getattr(p, "consumed", False) for p in _payloads(request.body)
            )

        async def attempt() -> aiohttp.ClientResponse:
            session = getattr(request, "session", None)
            if session is not None and session.closed:
                # Closed while the request waited (for the limits or a pause): aiohttp
                # would fail on its missing connector with a bare AssertionError.
                raise RuntimeError(
                    f"cannot send {request.method} {redact(str(request.url))}: the session was "
                    "closed while the request waited"
                )
            return await handler(request)

        return await self._policy.send(
            self._key(request),
            request.method,
            replayable,
            attempt,
            _status,
            _header,
            _close,
        )

    def __repr__(self) -> str:
        return f"<aiolease.aiohttp.limited {self._policy.limits!r}>"


def limited(
    limits: Any,
    *,
    key: Callable[[aiohttp.ClientRequest], Hashable] = request_host,
    retries: int = 2,
    retry_methods: Collection[str] | None = None,
    max_wait: float | None = 60.0,
    timeout: float | None = None,
) -> _Limited:
    """A client middleware sending each request under ``limits`` and honouring 429/503.

    Use as ``aiohttp.ClientSession(middlewares=[limited(limits)])`` (aiohttp >=
    3.12). Each request acquires ``limits`` under ``key(request)`` (default:
    the request's host); a concurrency slot is held until the response head
    has arrived. A 429 or 503 response with ``Retry-After`` (delta-seconds or
    HTTP-date), ``RateLimit`` or ``RateLimit-Reset`` pauses that key for every
    request through this middleware (and, for a limiter with ``pause()``, in
    the limiter: a Redis limiter pauses every process), and the request is
    sent again after the pause, up to ``retries`` times. The last response is
    returned as it is when retries are exhausted, the method is not retried,
    or the pause is longer than ``max_wait``; a body that cannot be sent again
    (an async iterable, a stream, a file that cannot seek back, or a multipart
    form holding one) is never resent. A request still waiting when its session is closed raises
    ``RuntimeError`` unsent. Use one middleware object per
    client so its pauses are shared by every request of that client.
    From a key's second throttling episode on (from its first, when nothing
    had been sent on the key for the announced wait before), its requests are
    also paced no faster than the server has shown it accepts (only ever
    slower than ``limits``; see ``pace(key)`` on the returned object).

    Args:
        limits: any aiolease limiter: ``RateLimiter``, ``ConcurrencyLimiter``,
            ``LimitGroup``, ``aiolease.redis.RedisRateLimiter`` or
            ``RedisConcurrencyLimiter``.
        key: ``key(request)`` returns the limiter key (any hashable); a plain
            function, not ``async def``.
        retries: how many times a throttled request is sent again, an int >= 0.
        retry_methods: the methods retried (default: the idempotent ones,
            GET HEAD OPTIONS TRACE PUT DELETE).
        max_wait: the longest pause (seconds) waited out, or None. A longer one holds
            the key for ``max_wait`` or 60 s, whichever is longer (at most the pause):
            its requests raise ``RateLimitExceeded`` at once, unsent, then the next
            asks the server again. ``limits`` is paused for ``max_wait`` only (a Redis
            limiter's other processes then learn the rest from their own answer). A slot
            of the key's learned pace is waited for at most ``max_wait`` too (then
            ``RateLimitExceeded``, unsent).
        timeout: the longest wait for ``limits`` per attempt (seconds), or None; it
            bounds the wait for the key's pause and learned pace too (then
            ``RateLimitExceeded``, the request unsent).

    Raises:
        TypeError: ``limits`` is a class or has no ``acquire()``, ``key`` is an async function
            or cannot be called with the request alone,
            or an option has the wrong type.
        ValueError: an option is out of range.
    """
    check_key(key)
    policy: RetryPolicy[aiohttp.ClientResponse] = RetryPolicy(
        limits, retries=retries, retry_methods=retry_methods, max_wait=max_wait, timeout=timeout
    )
    return _Limited(policy, key)
