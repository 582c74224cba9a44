"""ASGI integration: ``RateLimitMiddleware`` answers 429 to requests over a limit.

Plain ASGI, so it needs no extra package and works with Starlette, FastAPI,
Quart, Litestar or a bare ASGI callable. For example:

```python
app.add_middleware(aiolease.asgi.RateLimitMiddleware,
                   limiter=aiolease.RateLimiter(10, per=1.0, burst=20),
                   key=aiolease.asgi.client_ip, exempt={"/health"})
```

A request over the limit gets ``429 Too Many Requests`` with ``Retry-After``
(whole seconds until the same request would be admitted, rounded up, at least
1) and the IETF ``RateLimit-Policy`` and ``RateLimit`` fields in the syntax of
draft-ietf-httpapi-ratelimit-headers-08 to -11 (Structured Fields:
``RateLimit-Policy: "default";q=10;w=1``, ``RateLimit: "default";r=0;t=1``).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, MutableMapping
from typing import Any

from ._errors import RateLimitExceeded, WouldBlock
from ._http import is_async_function
from ._logs import get_logger
from ._shield import shielded
from ._validate import check_arity

__all__ = ["RateLimitMiddleware", "client_ip"]

logger = get_logger("aiolease.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How long a request refused by a concurrency limit is told to wait: when a
#: slot frees up is not known in advance.
CONCURRENCY_RETRY_AFTER = 1

#: The longest a concurrency slot's release may take (a Redis round trip) before
#: the middleware stops waiting for it; the lease then expires on its own.
RELEASE_TIMEOUT = 5.0

_BODY = b"Too Many Requests"
#: What a policy name may hold: it is sent inside a Structured Fields string (RFC 8941).
_FIELD_TEXT = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]+")


def client_ip(scope: Scope) -> str:
    """The default key: the client's address as the server saw it.

    ``"unknown"`` when the scope has no client address (a server on a Unix
    socket): all such requests share that key.
    No forwarding header is read here: a client could name any address in it.
    Behind a reverse proxy this is the proxy's address unless the server
    rewrites it from ``X-Forwarded-For`` for the proxies it trusts (uvicorn:
    ``--proxy-headers --forwarded-allow-ips=<your proxies>``, never ``'*'`` on a
    server clients reach directly); otherwise pass a key function of your own.
    """
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _window(rate: float, per: float) -> tuple[int, int]:
    """``(q, w)``: the sustained rate as a quota over a whole number of seconds, never more
    than the limiter admits (``q / w <= rate / per``)."""
    w = max(1, math.ceil(per))
    if rate * w / per < 1:  # less than one request per window: stretch it to hold one
        w = math.ceil(per / rate - 1e-9)
    return max(1, math.floor(rate * w / per + 1e-9)), w


def _policy(limiter: Any, name: str) -> str | None:
    """The ``RateLimit-Policy`` item describing ``limiter``, or None when it cannot be told."""
    members = getattr(limiter, "members", None)
    candidates = list(members) if members is not None else [limiter]
    rates: list[tuple[float, int, int]] = []
    slots: list[int] = []
    for m in candidates:
        stats = getattr(m, "statistics", None)
        if stats is None:
            continue
        s = stats()
        if hasattr(s, "rate") and hasattr(s, "per"):
            q, w = _window(s.rate, s.per)
            rates.append((s.rate / s.per, q, w))
        elif hasattr(s, "limit"):
            slots.append(int(s.limit))
    if rates:  # the most restrictive rate is the one a client meets first
        _, q, w = min(rates)
        return f'"{name}";q={q};w={w}'
    if slots:
        return f'"{name}";q={min(slots)};qu="concurrent-requests"'
    return None


def _exempt_test(exempt: Collection[str] | Callable[[Scope], bool]) -> Callable[[Scope], bool]:
    if callable(exempt):
        if is_async_function(exempt):
            # Its coroutine would be taken for the answer, and a coroutine is true: every
            # request exempt (nothing limited) and a coroutine never awaited.
            raise TypeError(
                f"exempt={exempt!r} is an async function: the exempt function must return "
                "a bool (a plain def of the ASGI scope)"
            )
        check_arity("exempt: a function of the ASGI scope", exempt, 1, "the scope")
        return exempt
    if isinstance(exempt, str):
        raise TypeError(
            f"exempt={exempt!r}: expected a collection of paths (e.g. {{{exempt!r}}}) "
            "or a function of the ASGI scope"
        )
    paths = tuple(exempt) if isinstance(exempt, Iterable) else None
    if paths is None or not all(isinstance(p, str) for p in paths):
        raise TypeError(
            f"exempt={exempt!r}: expected a collection of paths or a function of the ASGI scope"
        )
    stray = [p for p in paths if not p.startswith("/")]
    if stray:  # (an ASGI request's path starts with "/": these would never match)
        raise ValueError(
            f"exempt={exempt!r}: {stray[0]!r} never matches a request path, which starts with "
            f"'/' (write {'/' + stray[0]!r})"
        )
    exact = frozenset(p for p in paths if not p.endswith("*"))
    prefixes = tuple(p[:-1] for p in paths if p.endswith("*"))

    def test(scope: Scope) -> bool:
        path: str = scope.get("path", "")
        return path in exact or (bool(prefixes) and path.startswith(prefixes))

    return test


class RateLimitMiddleware:
    """Refuse HTTP requests over ``limiter`` with 429 and the standard headers.

    Each HTTP request takes ``limiter.acquire_nowait(key=key(scope))`` before
    the app runs. Admitted, the app runs (a concurrency slot is held until the
    response's last part is sent, or the app returns or fails); refused, the
    client gets 429 at once, without waiting.
    WebSocket and lifespan traffic passes through untouched.

    Args:
        app: the ASGI application to protect.
        limiter: ``aiolease.RateLimiter``, ``ConcurrencyLimiter``, ``LimitGroup``,
            ``aiolease.redis.RedisRateLimiter`` or ``RedisConcurrencyLimiter``.
            A ``RedisRateLimiter`` with ``on_error="raise"`` lets ``LimiterUnavailable``
            through to the server when Redis is down; choose ``"allow"`` to
            fail open or ``"deny"`` to refuse with 429. A ``RedisConcurrencyLimiter``
            lets it through unless it has a ``fallback``.
        key: ``key(scope)`` returns the limiter key (any hashable; default the
            client's IP address, :func:`client_ip`); a plain function, not ``async def``.
        exempt: paths never limited: exact paths, or prefixes written with a
            trailing ``*`` (``"/static/*"``), each starting with ``/``; or a function
            ``exempt(scope) -> bool`` (a plain function, not ``async def``).
        policy_name: the policy's name in the ``RateLimit-Policy``/``RateLimit`` fields.
        policy: the ``RateLimit-Policy`` value to send instead of the one derived
            from ``limiter`` (for a LimitGroup, the derived one describes its most
            restrictive rate member).

    Raises:
        TypeError: ``app`` is not callable, ``limiter`` is a class or has no
            ``acquire_nowait()``, ``key`` is not callable, is an async function
            or cannot be called with the scope alone,
            ``exempt`` is a single string, holds a non-string, is an async
            function or cannot be called with the scope alone, or ``policy`` is
            not a string.
        ValueError: ``policy_name`` is empty or not printable ASCII without ``"``
            and ``\\``; ``policy`` is not printable ASCII; an ``exempt`` path does not
            start with ``/`` (it would never match).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: Any,
        key: Callable[[Scope], Hashable] = client_ip,
        exempt: Collection[str] | Callable[[Scope], bool] = (),
        policy_name: str = "default",
        policy: str | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(
                f"app={app!r}: expected an ASGI application (an async callable of scope, "
                "receive and send) to wrap"
            )
        if isinstance(limiter, type):
            # Its acquire_nowait is callable too, and would fail on the first request.
            raise TypeError(
                f"limiter={limiter!r} is a class: pass a limiter, e.g. {limiter.__name__}(...)"
            )
        if not callable(getattr(limiter, "acquire_nowait", None)):
            raise TypeError(
                f"limiter={limiter!r} has no acquire_nowait(): pass an aiolease limiter "
                "(RateLimiter, ConcurrencyLimiter, LimitGroup or a Redis limiter)"
            )
        if not callable(key):
            raise TypeError(f"key={key!r}: expected a function of the ASGI scope")
        if is_async_function(key):
            # Its coroutine would be taken for the key itself: a new key for every
            # request (nothing limited) and a coroutine never awaited.
            raise TypeError(
                f"key={key!r} is an async function: the key function must return the key "
                "(a plain def of the ASGI scope)"
            )
        check_arity("key: a function of the ASGI scope", key, 1, "the scope")
        if not isinstance(policy_name, str) or not _FIELD_TEXT.fullmatch(policy_name):
            raise ValueError(
                f"policy_name={policy_name!r}: expected a non-empty name of printable ASCII "
                "without '\"' or '\\'"
            )
        if policy is not None:
            if not isinstance(policy, str):
                raise TypeError(f"policy={policy!r}: expected a RateLimit-Policy field value (str)")
            if not policy.isascii() or not policy.isprintable():
                raise ValueError(f"policy={policy!r}: expected printable ASCII (a header value)")
        self.app = app
        self.limiter = limiter
        self.key = key
        self._exempt = _exempt_test(exempt)
        self._name = policy_name
        self._policy = policy if policy is not None else _policy(limiter, policy_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope):
            await self.app(scope, receive, send)
            return
        try:
            permit = self.limiter.acquire_nowait(key=self.key(scope))
            if inspect.isawaitable(permit):  # the Redis limiters answer after a round trip
                permit = await permit
        except RateLimitExceeded as exc:
            await self._refuse(send, exc.retry_after)
            return
        except WouldBlock as exc:
            # A concurrency limit cannot tell when a slot frees up; a rate member of a
            # group that refused too tells the least wait.
            wait = exc.retry_after
            await self._refuse(send, CONCURRENCY_RETRY_AFTER if wait is None else wait)
            return
        if not (hasattr(permit, "arelease") or hasattr(permit, "release")):
            await self.app(scope, receive, send)  # a rate permit: nothing to give back
            return
        released = False

        async def send_then_release(message: Message) -> None:
            # The slot is given back before the last body part goes out, so a
            # client that sends its next request on seeing a response never
            # finds its own previous request still holding the slot.
            nonlocal released
            if (
                not released
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                released = True
                await _release(permit)
            await send(message)

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            if not released:
                released = True
                await _release(permit)

    async def _refuse(self, send: Send, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(_BODY)).encode()),
            (b"retry-after", str(seconds).encode()),
            (b"ratelimit", f'"{self._name}";r=0;t={seconds}'.encode()),
        ]
        if self._policy is not None:
            headers.append((b"ratelimit-policy", self._policy.encode()))
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": _BODY})

    def __repr__(self) -> str:
        return f"<RateLimitMiddleware {self.limiter!r} around {self.app!r}>"


async def _release(permit: Any) -> None:
    """Give a concurrency slot back (a rate permit has nothing to give back)."""
    arelease = getattr(permit, "arelease", None)
    if arelease is not None:
        # A Redis release is a round trip: shielded from the request's
        # cancellation and bounded, so neither leaks the slot nor hangs.
        # (asyncio.wait, not wait_for: Python 3.11's wait_for returns the result, swallowing
        # the cancellation, when the release ends in the step the cancellation comes.)
        task = asyncio.ensure_future(arelease())
        try:
            done, _ = await asyncio.wait({task}, timeout=RELEASE_TIMEOUT)
        except asyncio.CancelledError:
            # Shielded from an anyio scope's cancellation too, which anyio delivers again
            # at each await: the response must not leave before the slot is given back.
            with shielded():
                await asyncio.wait({task}, timeout=RELEASE_TIMEOUT)
            raise
        if not done:
            logger.warning(
                "releasing %r took over %ss; its lease expires on its own", permit, RELEASE_TIMEOUT
            )
            return
        task.result()
        return
    release = getattr(permit, "release", None)
    if release is not None:
        release()
