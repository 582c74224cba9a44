"""The client side of the HTTP integrations, shared by ``aiolease.httpx`` and ``aiolease.aiohttp``.

Three pieces, none of which imports an HTTP library:

* :func:`retry_delay` reads how long a 429/503 response asks the client to wait
  (``Retry-After`` as delta-seconds or HTTP-date, the IETF ``RateLimit`` field
  in its draft-08+ and draft-07 syntaxes, or the older ``RateLimit-Reset``).
* :class:`Pauses` holds, per key, the loop-clock instant until which nothing
  may be sent, and the pace learned from the key's throttling episodes; every
  caller using the same client waits them out.
* :class:`RetryPolicy` runs one request: acquire the limits under the key, wait
  out a pause, send; on a 429/503 that says how long to wait, pause the key
  (locally and in the limiter, so a Redis limiter pauses every process) and
  retry up to ``retries`` times. Each client library supplies only how to send
  a request and how to read and close a response.
"""

from __future__ import annotations

import asyncio
import calendar
import email.utils
import inspect
import ipaddress
import math
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from ._errors import RateLimitExceeded
from ._logs import get_logger
from ._validate import LONGEST_WAIT, check_arity
from ._validate import check_key as check_key_value

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "HeaderGetter",
    "Pauses",
    "RetryPolicy",
    "check_key",
    "host_key",
    "retry_delay",
]

logger = get_logger("aiolease.http")

#: Methods RFC 9110 defines as idempotent: retried after a 429/503 by default.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: The statuses whose waiting instructions pause the key.
RETRY_STATUSES = frozenset({429, 503})

#: Above this a ``Retry-After``, ``RateLimit`` (``t=``, draft-07 ``reset=``) or
#: ``RateLimit-Reset`` value is read as a Unix time, not a delay (some servers send
#: the epoch form); ten years of seconds.
_EPOCH_THRESHOLD = 10 * 365 * 86400.0
#: delta-seconds: ASCII digits only (RFC 9110 DIGIT; ``\d`` alone takes "٣" for 3).
_DELTA = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$", re.ASCII)
#: The day name an IMF-fixdate or RFC 850 date starts with, before its comma.
_DAY_NAME = re.compile(r"^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*$", re.ASCII | re.IGNORECASE)
#: One member of a Structured Fields list (RFC 8941): commas inside quoted strings kept.
_MEMBER = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^,"])+')


def is_async_function(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine (an ``async def`` function or callable object)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def check_key(key: object) -> None:
    """The adapters' ``key`` option: a function of the request (checked at the call)."""
    if not callable(key):
        raise TypeError(f"key={key!r}: expected a function of the request returning the key")
    if is_async_function(key):
        # Its coroutine would be taken for the key itself: a new key for every request
        # (nothing limited) and a coroutine never awaited.
        raise TypeError(
            f"key={key!r} is an async function: the key function must return the key "
            "(a plain def); compute anything awaited before the request"
        )
    check_arity("key: a function of the request", key, 1, "the request")


def host_key(host: str) -> str:
    """A URL's host as the adapters' default key, the same in both adapters.

    Both client libraries lower-case a name (a trailing dot is kept: a distinct
    name to a server's virtual hosts); an IPv6 literal is given here its one
    canonical text (RFC 5952, zone percent-decoded): httpx keeps it as written,
    so ``[0:0::1]`` and ``[::1]`` would be two keys, a pause of one not holding
    the other.
    """
    if ":" not in host:
        return host
    try:
        return str(ipaddress.ip_address(urllib.parse.unquote(host)))
    except ValueError:
        return host


class HeaderGetter(Protocol):
    """``get(name)``: the response's field value (several lines joined by ", ") or None."""

    def __call__(self, name: str) -> str | None: ...


def _number(text: str) -> float | None:
    """A non-negative decimal, or None; too many digits for a float read as inf (see _wait)."""
    m = _DELTA.match(text)
    return float(m.group(1)) if m else None


def _wait(seconds: float) -> float:
    # Capped at 2**31 s as RFC 9111 (1.2.2) caps delta-seconds: too many digits for a float
    # would read as inf, which a limiter refuses to pause for while the key stayed paused here
    # for good (a later request waited forever, whatever its timeout).
    return min(seconds, LONGEST_WAIT)


def _http_date(text: str) -> float | None:
    """An HTTP-date (IMF-fixdate, RFC 850 or asctime form) as a Unix time, or None."""
    try:
        parts = email.utils.parsedate_tz(text.strip())
        if parts is None:
            return None
        # An HTTP-date is always GMT; a missing zone is read as GMT too. timegm refuses
        # what the parser lets through but no calendar holds (year 99999): malformed too.
        return float(calendar.timegm(parts[:9])) - (parts[9] or 0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _reference_time(header: HeaderGetter) -> float:
    """The server's "now" for turning an HTTP-date into a delay.

    The response's own ``Date`` is used when present, so a client whose clock is
    off still waits the time the server meant; otherwise the wall clock (the
    only clock an absolute date can be compared with).
    """
    date = header("Date")
    at = _http_date(date) if date else None
    return at if at is not None else time.time()


def _until(at: float, header: HeaderGetter) -> float:
    """The delay until the absolute time ``at``, capped as delta-seconds are."""
    return _wait(max(0.0, at - _reference_time(header)))


def _seconds_or_epoch(seconds: float, header: HeaderGetter) -> float:
    """delta-seconds, or the delay until a Unix time sent in their place (see _EPOCH_THRESHOLD):
    read as seconds, that would pause the key for decades."""
    return _until(seconds, header) if seconds > _EPOCH_THRESHOLD else _wait(seconds)


def _one_retry_after(value: str, header: HeaderGetter) -> float | None:
    seconds = _number(value)
    if seconds is not None:
        return _seconds_or_epoch(seconds, header)
    at = _http_date(value)
    if at is None:
        return None
    return _until(at, header)


def _retry_after(value: str, header: HeaderGetter) -> float | None:
    """One ``Retry-After`` value, or several (the field repeated, e.g. by a proxy, comes
    joined by ", "): the longest wait among them, or None when any is malformed.

    An HTTP-date holds a comma itself, right after its day name: such a piece and the
    next are one value. (The whole field is not tried as one date first: the date
    parser is lenient, and would read the first of several dates and drop the rest.)
    """
    if "," not in value:
        return _one_retry_after(value, header)
    pieces = [p.strip() for p in value.split(",")]
    waits: list[float] = []
    i = 0
    while i < len(pieces):
        if i + 1 < len(pieces) and _DAY_NAME.match(pieces[i]):
            piece, i = f"{pieces[i]}, {pieces[i + 1]}", i + 2
        else:
            piece, i = pieces[i], i + 1
        wait = _one_retry_after(piece, header)
        if wait is None:
            return None
        waits.append(wait)
    return max(waits)


def _params(member: str) -> tuple[str, dict[str, str]]:
    name, *params = (p.strip() for p in member.split(";"))
    found: dict[str, str] = {}
    for p in params:
        k, sep, v = p.partition("=")
        found[k.strip().lower()] = v.strip() if sep else "?1"
    return name, found


def _ratelimit(value: str, header: HeaderGetter) -> float | None:
    """The wait a ``RateLimit`` field implies: the longest reset among exhausted quotas.

    draft-ietf-httpapi-ratelimit-headers-08 and later: a list of items
    ``"policy";r=<remaining>;t=<reset seconds>``. draft-07: one dictionary
    ``limit=10, remaining=0, reset=5``. A reset given as a Unix time is tolerated,
    as in ``Retry-After`` (see _EPOCH_THRESHOLD).
    """
    members = [m.strip() for m in _MEMBER.findall(value) if m.strip()]
    if not members:
        return None
    # draft-07 dictionary: each member a key=value, its key a token (a draft-08 item's
    # name is a quoted string, which may hold "=" itself)
    if all("=" in (n := _params(m)[0]) and not n.startswith('"') for m in members):
        fields = dict(_params(m)[0].partition("=")[::2] for m in members)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        reset = _number(fields.get("reset", ""))
        remaining = _number(fields.get("remaining", "0"))
        if reset is None or remaining != 0:
            return None
        return _seconds_or_epoch(reset, header)
    resets: list[float] = []
    for m in members:
        _, params = _params(m)
        reset = _number(params.get("t", ""))
        remaining = _number(params.get("r", "0"))
        if reset is not None and remaining == 0:
            resets.append(_seconds_or_epoch(reset, header))
    return max(resets) if resets else None


def _ratelimit_reset(value: str, header: HeaderGetter) -> float | None:
    """draft-06 and earlier: ``RateLimit-Reset: <delta-seconds>`` (an epoch value is tolerated).

    Those drafts allow one value (the reset of the policy closest to its limit); several
    (the field added by two layers, the lines joined by ", ") give the longest wait, as
    ``Retry-After`` does, or None when any is malformed.
    """
    waits: list[float] = []
    for piece in value.split(","):
        seconds = _number(piece)
        if seconds is None:
            return None
        waits.append(_seconds_or_epoch(seconds, header))
    return max(waits)


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
        seconds = _ratelimit(value, header)
        if seconds is not None:
            return seconds
    value = header("RateLimit-Reset")
    if value:
        return _ratelimit_reset(value, header)
    return None


#: How long a learned pace holds (seconds): then the key runs at its limiter's rate
#: again and relearns from its next episodes, so a server whose limit rose, or
#: that answered 503 while briefly overloaded, is not under-used for long.
LEARNED_PACE_LASTS = 60.0
#: A pause longer than ``max_wait`` is held here (its requests refused at once) for
#: ``max_wait`` or this long (seconds), whichever is longer, if the server asked for
#: more: then the next request asks the server again. A server that asked for hours
#: (or the end of time) and recovered sooner does not leave the key refused for good.
ASK_AGAIN_AFTER = 60.0


class _Key:
    """One key's state: the pause in force and the pace learned from its throttling episodes.

    An *episode* begins with a throttled response to a request sent after the
    previous episode began (throttled responses to requests already in flight
    belong to it). The server had nothing left to give at each episode, so the
    requests it accepted between the first episode and a later one are what
    it sustains over the announced waits plus the time the key was sending
    after each (a client that resumed late, held by its own limiter, is not
    taken for a slow server; an estimate too high costs one more episode,
    never a request inside an announced wait). The learned pace
    is a token bucket of that rate, sized to what it refills during the
    server's announced wait: the requests resumed after a pause use what the
    server's own bucket regained, then go on at the learned rate instead of
    running into the next 429. The span is restarted whenever no request of
    the key is waiting to be sent: a client that is not pushing leaves the
    server's bucket to fill up and overflow, and what is served then says
    nothing of the server's rate.

    The key's first episode already gives a provisional pace when nothing was
    sent on the key for at least the wait it announces before the key's first
    send (or ever): the server's bucket was then as full as after a pause, so
    what it accepted from the first answer on (half a token added, as above),
    over the announced wait plus the time requests of the key were waiting to
    be sent, is its rate. That estimate is off by up to half a request over
    its span either way, and after the one pause the requests left may need
    exactly what the server regains: its bucket starts one request short, so
    that an estimate a hair too high does not send the last of them into a
    second 429 and a whole second wait. Time when no request was waiting is
    left out (the server's bucket may have overflowed then, which would make
    the rate look too low); the accepted requests sent in it are kept, so that
    estimate errs high, costing one more episode. The second episode replaces
    it.
    """

    __slots__ = (
        "burst",
        "early",
        "episode",
        "first_answer",
        "first_sent",
        "first_span",
        "generation",
        "idle",
        "idle_since",
        "last_sent",
        "learned_at",
        "quiet",
        "rate",
        "refuse",
        "resumed",
        "served",
        "span",
        "span_start",
        "tat",
        "until",
        "waited",
        "waiting",
    )

    def __init__(self) -> None:
        self.until = -math.inf  # the pause in force ends here (loop clock)
        self.refuse = False  # the pause in force is one past max_wait: refused, not waited out
        self.generation = 0  # bumped by each pause and episode: paced waiters reserve again
        self.waiting = 0  # requests of this key waiting to be sent (limits, pause, pace)
        self.episode = -math.inf  # when the latest episode began
        self.span_start: float | None = None  # first episode of the learning span
        self.served = 0  # responses not throttled, to requests sent within the span
        # Before the first episode: the first send, the silence before it, the
        # first answer not throttled, the latest send, the seconds nothing waited
        # since the first answer (and the ongoing spell), and the answers not
        # throttled to requests sent from the first send on.
        self.first_sent: float | None = None
        self.first_answer: float | None = None
        self.quiet = math.inf
        self.last_sent = -math.inf
        self.idle = 0.0
        self.idle_since: float | None = None
        self.early = 0
        # The seconds the first episode's pace is reckoned over, while that pace
        # is in force: answers still in flight at the episode are added to it.
        self.first_span: float | None = None
        self.span = 0.0  # seconds of the span the server was being used: waits and sending
        self.waited = 0.0  # the latest episode's announced wait
        self.resumed: float | None = None  # the first send after the latest episode
        self.rate: float | None = None  # learned pace, requests per second
        self.burst = 1.0  # learned bucket size, requests
        self.learned_at = -math.inf
        self.tat = -math.inf  # the learned bucket is full again at this instant (GCRA)

    def pace(self, now: float) -> float | None:
        """The learned rate in force, or None."""
        if self.rate is not None and now - self.learned_at > LEARNED_PACE_LASTS:
            self.rate = None
        return self.rate

    def reserve(self, now: float, within: float = math.inf) -> float:
        """Seconds until the next slot of the learned pace comes (0: now); the slot is
        taken only when it comes within ``within`` seconds."""
        rate = self.pace(now)
        if rate is None:
            return 0.0
        interval = 1.0 / rate
        at = max(now, self.tat - (self.burst - 1.0) * interval)
        if at - now <= within:
            self.tat = max(self.tat, at) + interval
        return at - now


class Pauses:
    """Per key, the instant until which nothing may be sent, and the pace learned after it.

    :meth:`wait` holds a request until the key's pause is over and a slot of
    its learned pace (see :class:`_Key`) has come; the pace only ever delays,
    so every limit of the caller's own limiter still holds. Entries of keys
    that are idle, not paused and without a pace are dropped when read, and all
    of them whenever the map has doubled since the last sweep. A key created
    again takes the latest send of any dropped key as its own last send: its
    silence is understated, never overstated.
    """

    __slots__ = ("_forgotten", "_keys", "_sweep_mark")

    def __init__(self) -> None:
        self._keys: dict[Hashable, _Key] = {}
        self._sweep_mark = 64
        self._forgotten = -math.inf  # the latest send of a dropped entry

    def _state(self, key: Hashable, now: float) -> _Key:
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _Key()
            st.last_sent = self._forgotten
            if len(self._keys) >= self._sweep_mark:
                for k in [k for k, s in self._keys.items() if s is not st and self._idle(s, now)]:
                    self._drop(k)
                self._sweep_mark = max(64, 2 * len(self._keys))
        return st

    def _drop(self, key: Hashable) -> None:
        self._forgotten = max(self._forgotten, self._keys.pop(key).last_sent)

    @staticmethod
    def _idle(st: _Key, now: float) -> bool:
        return st.waiting == 0 and st.until <= now and st.pace(now) is None

    def pause(self, key: Hashable, seconds: float, now: float, refuse: bool = False) -> None:
        """Hold ``key`` until ``now + seconds``; a pause in force is never shortened.

        ``refuse``: the server asked for longer than ``max_wait``, so the key's requests
        raise at once (:meth:`check`) instead of waiting the pause out.
        """
        st = self._state(key, now)
        until = now + seconds
        if until > st.until:
            st.until = until
            st.refuse = refuse
            st.generation += 1

    def remaining(self, key: Hashable, now: float) -> float:
        """Seconds until ``key`` may send again (0 when it is not paused)."""
        st = self._keys.get(key)
        if st is None:
            return 0.0
        if self._idle(st, now):
            self._drop(key)
            return 0.0
        return max(0.0, st.until - now)

    def pace(self, key: Hashable, now: float) -> float | None:
        """The rate (requests per second) learned for ``key`` and in force, or None."""
        st = self._keys.get(key)
        return None if st is None else st.pace(now)

    def begin(self, key: Hashable, now: float) -> None:
        """An attempt for ``key`` waits to be sent (then :meth:`sent` or :meth:`gave_up`)."""
        st = self._state(key, now)
        st.waiting += 1
        if st.idle_since is not None:
            st.idle += max(0.0, now - st.idle_since)
            st.idle_since = None

    def sent(self, key: Hashable, at: float) -> None:
        """The attempt is sent at ``at``."""
        st = self._keys[key]
        if st.resumed is None and at >= st.episode:
            st.resumed = at
        if st.first_sent is None:
            st.first_sent = at
            st.quiet = at - st.last_sent
        st.last_sent = max(st.last_sent, at)
        self._left(st, at)

    def gave_up(self, key: Hashable, now: float) -> None:
        """The attempt ends without being sent (a limiter timeout, a cancellation)."""
        self._left(self._keys[key], now)

    @staticmethod
    def _left(st: _Key, now: float) -> None:
        st.waiting -= 1
        if st.waiting == 0:  # nothing pushing: the learning span restarts at the next episode
            if st.first_sent is not None and st.episode == -math.inf:
                st.idle_since = now  # before the first episode: see _first_episode
            st.span_start = None
            st.served = 0
            st.span = 0.0

    def answered(self, key: Hashable, sent_at: float, now: float) -> None:
        """A response that was not throttled, to a request sent at ``sent_at``, came at ``now``."""
        st = self._keys.get(key)
        if st is None:
            return
        if st.span_start is not None and sent_at >= st.span_start:
            st.served += 1
        if st.first_sent is None or sent_at < st.first_sent:
            return
        if st.episode == -math.inf:
            st.early += 1
            if st.first_answer is None:
                st.first_answer = now
                st.idle = 0.0
                if st.idle_since is not None:
                    st.idle_since = max(st.idle_since, now)
        elif st.first_span is not None and sent_at < st.episode:
            st.early += 1  # sent before the first episode, answered after it
            self._learn(st, (st.early + 0.5) / st.first_span, st.waited, st.learned_at)

    def throttled(
        self, key: Hashable, seconds: float, sent_at: float, now: float, refuse: bool = False
    ) -> None:
        """A throttled response: pause the key ``seconds`` (see :meth:`pause` for ``refuse``),
        learn from a new episode."""
        st = self._state(key, now)
        if sent_at >= st.episode:  # not in flight when the latest episode began: a new one
            st.first_span = None  # a later episode: the span below takes over
            first = False
            if st.span_start is None:
                if st.episode == -math.inf:
                    first = self._first_episode(st, seconds, sent_at, now)
                st.span_start = now
            else:
                resumed = sent_at if st.resumed is None else st.resumed
                st.span += st.waited + max(0.0, now - resumed)
                if st.served > 0 and st.span > 0:
                    # The server's bucket held a fraction of a token at each end of
                    # the span (less than one, or it would not have throttled): half
                    # a token is the middle of what it accepted beyond the count.
                    self._learn(st, (st.served + 0.5) / st.span, seconds, now)
            st.episode = now
            st.waited = seconds
            st.resumed = None
            st.generation += 1
            if st.rate is not None:
                st.tat = now + st.burst / st.rate  # the server's bucket is empty now
                if first:
                    # One request short: a first estimate a hair too high must not run
                    # the requests resumed after this pause into a second 429.
                    st.tat += 1.0 / st.rate
        self.pause(key, seconds, now, refuse)

    def _first_episode(self, st: _Key, seconds: float, sent_at: float, now: float) -> bool:
        """The provisional pace of the key's first episode (see :class:`_Key`).

        The push is timed from the first answer to the throttled request's
        send: the server saw the first request at neither its send (a new
        connection is opened first) nor much before its answer, and the
        throttled one about when it was sent. True: a pace was learned.
        """
        if st.first_answer is None or st.quiet < seconds:
            return False
        idle = st.idle
        if st.idle_since is not None:
            idle += max(0.0, sent_at - st.idle_since)
        span = seconds + max(0.0, sent_at - st.first_answer - idle)
        if span <= 0.0:  # no wait announced and sent before the first answer: nothing to time
            return False
        st.first_span = span
        self._learn(st, (st.early + 0.5) / span, seconds, now)
        return True

    @staticmethod
    def _learn(st: _Key, rate: float, seconds: float, now: float) -> None:
        st.rate = rate
        st.burst = max(1.0, rate * seconds)
        st.learned_at = now

    def check(self, key: Hashable, now: float, longest: float = math.inf) -> None:
        """Raise while ``key`` is held by a pause past ``max_wait`` (``longest``, named in
        the message): one that is refused, not waited out (see :meth:`pause`).

        Raises:
            RateLimitExceeded: the key is held so; ``retry_after`` is when it asks again.
        """
        st = self._keys.get(key)
        if st is not None and st.refuse and st.until > now:
            raise RateLimitExceeded(
                st.until - now,
                f"{key!r} is paused by the server's answer for longer than max_wait={longest:g}: "
                f"refused for {st.until - now:.3g}s more, then the server is asked again",
            )

    async def wait(
        self, key: Hashable, deadline: float = math.inf, longest: float = math.inf
    ) -> None:
        """Sleep until ``key`` is not paused and a slot of its learned pace has come.

        A pause or an episode that begins during the wait is waited out too,
        and the slot is taken again after it (the learned bucket was emptied).
        The slot of a waiter cancelled meanwhile is not given back: the pace
        errs on the slow side. A slot is waited for at most ``longest`` seconds
        (``max_wait``), as a pause is.

        Raises:
            RateLimitExceeded: the pause or the slot ends after ``deadline`` (loop
                clock), the slot comes more than ``longest`` seconds from now, or the
                key is held by a pause past ``max_wait`` (see :meth:`check`); nothing
                is waited for and no slot is taken.
        """
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            st = self._keys.get(key)
            if st is None:
                return
            if st.until > now:
                self.check(key, now, longest)
                if st.until > deadline:
                    raise RateLimitExceeded(st.until - now, _past_end(key, "paused", "timeout"))
                await asyncio.sleep(st.until - now)
                continue
            # The slot must come by the timeout's deadline and within max_wait.
            end, past = deadline, "timeout"
            if now + longest < deadline:
                end, past = now + longest, f"max_wait={longest:g}"
            generation = st.generation
            delay = st.reserve(now, end - now)
            if now + delay > end:
                raise RateLimitExceeded(delay, _past_end(key, "paced", past))
            if delay <= 0:
                return
            await asyncio.sleep(delay)
            if st.generation == generation:
                return


def _past_end(key: Hashable, state: str, past: str) -> str:
    return f"{key!r} is {state} by the server's answers past this request's {past}"


R = TypeVar("R")


async def _close_orphan(close: Callable[[R], Awaitable[None]], response: R) -> None:
    """Close (shielded) a response that is nobody's now, because it is retried or an error or
    a cancellation is on its way out of the request: a failure of the close is logged, never
    raised (in that error's place: a cancellation must go on as one)."""
    try:
        await asyncio.shield(close(response))
    except Exception:
        logger.warning("could not close a response left behind by its request", exc_info=True)


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
        if isinstance(limits, type):
            # Its acquire is callable too, and would fail on every request.
            raise TypeError(
                f"limits={limits!r} is a class: pass a limiter, e.g. {limits.__name__}(...)"
            )
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
        check_key_value(key)
        return self._pauses.remaining(key, asyncio.get_running_loop().time())

    def pace(self, key: Hashable) -> float | None:
        """The rate (requests per second) learned for ``key`` and in force, or None."""
        check_key_value(key)
        return self._pauses.pace(key, asyncio.get_running_loop().time())

    async def pause(self, key: Hashable, seconds: float, sent_at: float) -> None:
        """Pause ``key`` here and in the limiter (a Redis limiter shares it between processes).

        ``sent_at`` is when the throttled request was sent: it tells a new
        episode from the answers to requests already in flight.
        """
        held, refuse = seconds, False
        if self.max_wait is not None and seconds > self.max_wait:
            # Not waited out, and held here for at most max(max_wait, ASK_AGAIN_AFTER):
            # then the next request asks the server again.
            held, refuse = min(seconds, max(self.max_wait, ASK_AGAIN_AFTER)), True
        self._pauses.throttled(key, held, sent_at, asyncio.get_running_loop().time(), refuse)
        limiter_pause = getattr(self.limits, "pause", None)
        if limiter_pause is None:
            return
        if self.max_wait is not None:
            # Nobody here waits out a longer pause (see send()), and in the limiter it
            # would hold the other processes of a Redis limiter, which never saw this
            # answer, for all of it: past max_wait each sends one request and pauses
            # itself from its own answer. A server asking for the end of time (2**31 s
            # here) would otherwise stop the key everywhere for decades.
            seconds = min(seconds, self.max_wait)
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
        replayable: Callable[[], bool],
        attempt: Callable[[], Awaitable[R]],
        status: Callable[[R], int],
        header: Callable[[R], HeaderGetter],
        close: Callable[[R], Awaitable[None]],
    ) -> R:
        """Send a request under the limits; pause and retry on a throttled response.

        Args:
            key: the limiter key (and the key paused on a 429/503).
            method: the request method (retries only for ``retry_methods``).
            replayable: whether the request body can be sent again (asked when a
                retry is due: a body read from a stream may be spent by then).
            attempt: sends the request once and returns the response head.
            status: the response's status code.
            header: the response's field reader.
            close: releases a response without reading it.

        Raises:
            RateLimitExceeded, LimitTimeout: the limits could not admit the
                request within ``timeout``; ``RateLimitExceeded`` too when the
                key's pause or learned pace holds it past ``timeout``, its next
                slot of the learned pace is more than ``max_wait`` away, or the key
                is held by a pause longer than ``max_wait`` (at once); unsent.
        """
        check_key_value(key)
        retry_method = method.upper() in self.retry_methods
        loop = asyncio.get_running_loop()
        # A pause longer than max_wait is not waited out by any request: the one
        # that got it returns the throttled response, the others raise at once.
        longest = math.inf if self.max_wait is None else self.max_wait
        tries = 0
        while True:
            start = loop.time()
            self._pauses.check(key, start, longest)
            self._pauses.begin(key, start)
            sent_at: float | None = None
            response: R | None = None
            try:
                async with self.limits.acquire(key=key, timeout=self.timeout):
                    # A pause that began while this request waited for the limits
                    # holds it too: nothing is sent into a window the server closed.
                    # ``timeout`` bounds that wait as well, from the attempt's start, and
                    # ``max_wait`` the wait for a slot of the learned pace, as a pause.
                    await self._pauses.wait(
                        key, math.inf if self.timeout is None else start + self.timeout, longest
                    )
                    sent_at = loop.time()
                    self._pauses.sent(key, sent_at)
                    response = await attempt()
            except BaseException:
                if response is not None:
                    # The limits' release failed or was cancelled (a Redis round trip)
                    # after the response head came: the response is nobody's now, and
                    # left open it would hold its connection for good.
                    await _close_orphan(close, response)
                raise
            finally:
                if sent_at is None:
                    self._pauses.gave_up(key, loop.time())
            throttled = status(response) in RETRY_STATUSES
            delay = retry_delay(header(response)) if throttled else None
            if delay is None:
                if not throttled:
                    self._pauses.answered(key, sent_at, loop.time())
                return response
            try:
                await self.pause(key, delay, sent_at)
            except BaseException:
                # Cancelled while a Redis limiter records the pause: the response
                # is nobody's now, so it is closed (shielded) before the error goes on.
                await _close_orphan(close, response)
                raise
            if (
                not retry_method
                or tries >= self.retries
                or (self.max_wait is not None and delay > self.max_wait)
                or not replayable()
            ):
                return response
            tries += 1
            # Closed unread: nobody reads it, and a throttled body may be huge or never
            # end. An HTTP/1.1 connection with a body left on it is closed, not reused.
            await _close_orphan(close, response)
