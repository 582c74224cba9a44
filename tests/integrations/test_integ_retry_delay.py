"""retry_delay(): every form of "wait this long" a throttled response can carry."""

from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aiolease
import aiolease.httpx
from aiolease._http import LEARNED_PACE_LASTS, Pauses, retry_delay


def _getter(headers: dict[str, str]):  # type: ignore[no-untyped-def]
    lowered = {k.lower(): v for k, v in headers.items()}
    return lambda name: lowered.get(name.lower())


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": " 0 "}, 0.0),
        ({"Retry-After": "1.5"}, 1.5),
        # RFC 9110's example date, measured against the response's own Date.
        (
            {
                "Date": "Fri, 31 Dec 1999 23:59:50 GMT",
                "Retry-After": "Fri, 31 Dec 1999 23:59:59 GMT",
            },
            9.0,
        ),
        # the obsolete RFC 850 and asctime forms
        (
            {
                "Date": "Friday, 31-Dec-99 23:59:50 GMT",
                "Retry-After": "Friday, 31-Dec-99 23:59:59 GMT",
            },
            9.0,
        ),
        ({"Date": "Fri Dec 31 23:59:50 1999", "Retry-After": "Fri Dec 31 23:59:59 1999"}, 9.0),
        # a date in the past: no wait
        (
            {
                "Date": "Fri, 31 Dec 1999 23:59:59 GMT",
                "Retry-After": "Fri, 31 Dec 1999 23:00:00 GMT",
            },
            0.0,
        ),
        # draft-08+ RateLimit: the longest reset among exhausted quotas
        ({"RateLimit": '"default";r=0;t=5'}, 5.0),
        ({"RateLimit": "permin;r=0;t=23, perhr;r=399;t=2402"}, 23.0),
        ({"RateLimit": '"a";r=0;t=3, "b";r=0;t=9'}, 9.0),
        ({"RateLimit": '"a, b";r=0;t=4'}, 4.0),
        # a policy name (a quoted string) holding "=": still a draft-08 item, not draft-07
        ({"RateLimit": '"per=minute";r=0;t=8'}, 8.0),
        ({"RateLimit": '"q=1";r=0;t=3, "q=2";r=0;t=5'}, 5.0),
        ({"RateLimit": '"default";r=5;t=30'}, None),  # quota left: not why we were throttled
        # draft-07 dictionary
        ({"RateLimit": "limit=10, remaining=0, reset=6"}, 6.0),
        ({"RateLimit": "limit=10, remaining=2, reset=6"}, None),
        # draft-06 and earlier
        ({"RateLimit-Reset": "4"}, 4.0),
        # a single value by those drafts; repeated (two layers each adding their own, the
        # lines joined by ", "): the longest, as for Retry-After, not the first
        ({"RateLimit-Reset": "4, 30"}, 30.0),
        ({"RateLimit-Reset": "30,4"}, 30.0),
        ({"RateLimit-Reset": "4, soon"}, None),
        ({"RateLimit-Reset": "4, "}, None),
        # Retry-After wins over RateLimit
        ({"Retry-After": "2", "RateLimit": '"default";r=0;t=50'}, 2.0),
        # the field repeated (by a proxy: the lines come joined by ", "): the longest
        ({"Retry-After": "120, 120"}, 120.0),
        ({"Retry-After": "5,120"}, 120.0),
        (
            {
                "Date": "Fri, 31 Dec 1999 23:59:50 GMT",
                "Retry-After": "Fri, 31 Dec 1999 23:59:59 GMT, Fri, 31 Dec 1999 23:59:59 GMT",
            },
            9.0,
        ),
        (
            {
                "Date": "Fri, 31 Dec 1999 23:59:50 GMT",
                "Retry-After": "3, Fri, 31 Dec 1999 23:59:59 GMT, 4",
            },
            9.0,
        ),
        # a date first: the date parser, lenient, read the first date and dropped the rest
        (
            {
                "Date": "Fri, 31 Dec 1999 23:59:50 GMT",
                "Retry-After": "Fri, 31 Dec 1999 23:59:55 GMT, Fri, 31 Dec 1999 23:59:59 GMT",
            },
            9.0,
        ),
        (
            {
                "Date": "Fri, 31 Dec 1999 23:59:50 GMT",
                "Retry-After": "Fri, 31 Dec 1999 23:59:55 GMT, 30",
            },
            30.0,
        ),
        (
            {
                "Date": "Fri, 31 Dec 1999 23:59:50 GMT",
                "Retry-After": "Fri Dec 31 23:59:55 1999, 30",
            },
            30.0,
        ),
        (
            {
                "Date": "Fri, 31 Dec 1999 23:59:50 GMT",
                "Retry-After": "Fri, 31 Dec 1999 23:59:55 GMT, soon",
            },
            None,
        ),
        ({"Retry-After": "120, soon"}, None),  # one of them malformed: the field is
        ({"Retry-After": "120, "}, None),
        # malformed values are ignored
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "\u0663"}, None),  # ARABIC-INDIC DIGIT THREE: not a DIGIT
        ({"RateLimit-Reset": "\uff14"}, None),  # FULLWIDTH DIGIT FOUR
        ({"RateLimit": "garbage"}, None),
        ({"Retry-After": "soon", "RateLimit-Reset": "3"}, 3.0),
        # delta-seconds beyond any float: 2**31 s (RFC 9111 1.2.2), never inf: a limiter
        # refuses an infinite pause, and the key would stay paused here for good
        ({"Retry-After": "9" * 400}, 2.0**31),
        ({"RateLimit": '"default";r=0;t=' + "9" * 400}, 2.0**31),
        # a date the parser reads but no calendar holds (year 99999) is malformed too, in
        # Retry-After or in the Date it is measured against (then the wall clock is used)
        ({"Retry-After": "Wed, 21 Oct 99999 07:28:00 GMT"}, None),
        ({"Retry-After": "Wed, 21 Oct 99999 07:28:00 GMT", "RateLimit-Reset": "3"}, 3.0),
        (
            {
                "Date": "Wed, 21 Oct 99999 07:28:00 GMT",
                "Retry-After": "Fri, 31 Dec 1999 23:59:59 GMT",
            },
            0.0,
        ),
        # an absolute time far ahead is capped as delta-seconds are
        (
            {
                "Date": "Fri, 31 Dec 1999 23:59:50 GMT",
                "Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT",
            },
            2.0**31,
        ),
        ({}, None),
    ],
)
def test_retry_delay(headers: dict[str, str], expected: float | None) -> None:
    assert retry_delay(_getter(headers)) == expected


def test_http_date_without_a_date_header_uses_the_wall_clock() -> None:
    at = email.utils.formatdate(time.time() + 30, usegmt=True)
    delay = retry_delay(_getter({"Retry-After": at}))
    assert delay is not None
    assert 28 <= delay <= 31


def test_epoch_ratelimit_reset_is_read_as_a_unix_time() -> None:
    headers = {"Date": "Fri, 31 Dec 1999 23:59:50 GMT", "RateLimit-Reset": "946684800"}
    assert retry_delay(_getter(headers)) == 10.0
    headers["RateLimit-Reset"] = "3, 946684800"  # each value read on its own
    assert retry_delay(_getter(headers)) == 10.0


def test_pauses_extend_never_shorten_and_forget_expired_keys() -> None:
    p = Pauses()
    p.pause("a", 5, now=100.0)
    p.pause("a", 1, now=100.0)
    assert p.remaining("a", 101.0) == 4.0
    assert p.remaining("a", 105.0) == 0.0
    assert p.remaining("b", 0.0) == 0.0
    for i in range(200):
        p.pause(i, 1, now=float(i))
    assert len(p._keys) < 100  # expired entries were swept


async def test_a_pause_past_the_deadline_fails_fast_and_a_short_one_is_waited() -> None:
    p = Pauses()
    loop = asyncio.get_running_loop()
    now = loop.time()
    p.pause("a", 30, now=now)
    with pytest.raises(aiolease.RateLimitExceeded) as caught:
        # The guard only catches a hang: a loaded machine may be slow to run the wait.
        await asyncio.wait_for(p.wait("a", deadline=now + 0.1), 10)
    # What is left of the pause when the wait refused it: (now + 30) - now may round to
    # an ulp either side of 30 (uvloop's clock, in whole milliseconds, often reads the
    # same twice).
    assert 30 - (loop.time() - now) - 1e-9 <= caught.value.retry_after <= 30 + 1e-9
    now = loop.time()
    p.pause("b", 0.01, now=now)
    await asyncio.wait_for(p.wait("b", deadline=now + 5), 10)


def test_a_slot_past_the_deadline_is_not_taken() -> None:
    p = Pauses()
    _two_episodes(p)
    st = p._keys["a"]
    rate = 40.5 / 2
    assert [st.reserve(4.0) for _ in range(20)] == [0.0] * 20  # the refilled bucket
    late = st.reserve(4.0, within=0.0)
    assert 0 < late <= 1 / rate
    assert st.reserve(4.0, within=0.0) == late  # not taken: the next caller gets it
    assert st.reserve(4.0, within=1.0) == late  # taken now
    assert st.reserve(4.0, within=1.0) == pytest.approx(late + 1 / rate)


def _answers(p: Pauses, start: float, n: int) -> None:
    """``n`` requests sent from ``start`` on, 1/40 s apart, each answered without throttling."""
    for i in range(n):
        p.begin("a", start + i / 40)
        p.sent("a", start + i / 40)
        p.answered("a", start + i / 40, start + i / 40)


def _two_episodes(p: Pauses) -> None:
    """Episodes at 1.0 and 3.0 (each asking for 1 s), 40 answers sent between them.

    One request waits all along (the client is pushing: the span is not restarted).
    """
    p.begin("a", 0.0)
    for t in range(10):
        p.answered("a", t / 20, t / 20)  # before the first episode: says nothing of the rate
    p.throttled("a", 1.0, sent_at=0.99, now=1.0)
    assert p.pace("a", 1.0) is None  # nothing was sent before it: no first-episode pace
    _answers(p, 2.0, 40)
    p.throttled("a", 1.0, sent_at=2.99, now=3.0)


def test_a_pace_is_learned_from_the_second_episode() -> None:
    p = Pauses()
    _two_episodes(p)
    assert p.pace("a", 3.0) == pytest.approx(40.5 / 2)
    assert p.remaining("a", 3.0) == 1.0
    # A 429 to a request sent before the episode began belongs to it: nothing relearned.
    p.throttled("a", 1.0, sent_at=2.995, now=3.01)
    assert p.pace("a", 3.01) == pytest.approx(40.5 / 2)
    # Past LEARNED_PACE_LASTS the key runs at its limiter's rate again.
    assert p.pace("a", 3.0 + LEARNED_PACE_LASTS + 1) is None


def test_the_learned_bucket_refills_over_the_pause_then_paces() -> None:
    p = Pauses()
    _two_episodes(p)
    st = p._keys["a"]
    rate = 40.5 / 2
    # Emptied at the episode (3.0) and refilled over the 1 s pause: `rate` requests
    # at once, then 1/rate apart.
    delays = [st.reserve(4.0) for _ in range(25)]
    assert delays[:20] == [0.0] * 20
    assert delays[21] == pytest.approx(delays[20] + 1 / rate)
    assert 0 < delays[20] <= 1 / rate


def test_a_key_with_no_request_waiting_restarts_the_span() -> None:
    p = Pauses()
    p.begin("a", 0.0)
    p.throttled("a", 1.0, sent_at=0.5, now=1.0)
    _answers(p, 2.0, 40)
    p.gave_up("a", 9.0)  # no request waiting: a quiet spell, not the server's rate
    p.begin("a", 10.0)
    p.throttled("a", 1.0, sent_at=10.0, now=10.5)
    assert p.pace("a", 10.5) is None


def test_a_late_resumption_is_not_taken_for_a_slow_server() -> None:
    # Held by its own limiter, the key sends again 1.5 s after a 1 s wait: the rate is
    # what was accepted over the announced wait plus the time spent sending.
    p = Pauses()
    p.begin("a", 0.0)
    p.throttled("a", 1.0, sent_at=0.99, now=1.0)
    _answers(p, 2.5, 30)
    p.throttled("a", 1.0, sent_at=3.2, now=3.25)
    assert p.pace("a", 3.25) == pytest.approx(30.5 / (1.0 + 0.75))


async def test_a_date_beyond_the_calendar_reaches_the_caller_as_the_429() -> None:
    """Through an adapter: the throttled response is the caller's (not a ValueError with
    the response left open), and nothing is paused."""

    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 99999 07:28:00 GMT"})

    limiter = aiolease.RateLimiter(100, per=1.0)
    transport = aiolease.httpx.LimitedTransport(limiter, wrapped=httpx.MockTransport(api))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        response = await client.get("/")
    assert response.status_code == 429
    assert transport.paused_for("api.test") == 0.0


def _first_push(p: Pauses, n: int, *, pushing: bool = True) -> None:
    """``n`` requests sent from 0.0, 1/40 s apart, each answered, then a 429 at 1.0.

    ``pushing``: one more request waits all along (the client is held by its limits);
    otherwise each request is sent as soon as it begins and nothing waits in between.
    """
    if pushing:
        p.begin("a", 0.0)
    for i in range(n):
        p.begin("a", i / 40)
        p.sent("a", i / 40)
        p.answered("a", i / 40, i / 40)
    p.begin("a", 0.99)
    p.sent("a", 0.99)
    p.throttled("a", 1.0, sent_at=0.99, now=1.0)


def test_the_first_episode_of_a_quiet_key_gives_a_pace() -> None:
    # Never used before: the server's bucket was full at the first send, so what it
    # accepted until the 429, over the announced wait plus the push, is its rate.
    p = Pauses()
    _first_push(p, 40)
    # From the first answer to the throttled request's send (0.99), plus the wait; half
    # a token for the fraction the server's bucket held at the 429.
    assert p.pace("a", 1.0) == pytest.approx(40.5 / 1.99)
    # An answer still in flight at the 429, to a request sent before it, is added.
    p.answered("a", 0.98, 1.01)
    rate = 41.5 / 1.99
    assert p.pace("a", 1.0) == pytest.approx(rate)
    st = p._keys["a"]
    assert st.burst == pytest.approx(rate)  # what the server regains over its wait
    # After the pause the learned bucket is one request short of it, then 1/rate apart.
    delays = [st.reserve(2.0) for _ in range(22)]
    assert delays[:19] == [0.0] * 19
    assert 0 < delays[19] <= 1 / rate
    assert delays[20] == pytest.approx(delays[19] + 1 / rate)
    assert p.remaining("a", 1.0) == 1.0  # the pause holds as before


def test_the_first_episode_is_timed_from_the_first_answer() -> None:
    # The first request opened the connection: the server saw it at about its answer.
    p = Pauses()
    p.begin("a", 0.0)  # one request waits all along
    p.begin("a", 0.0)
    p.sent("a", 0.0)
    p.answered("a", 0.0, 0.05)
    for i in range(2, 40):
        p.begin("a", i / 40)
        p.sent("a", i / 40)
        p.answered("a", i / 40, i / 40)
    p.begin("a", 0.99)
    p.sent("a", 0.99)
    p.throttled("a", 1.0, sent_at=0.99, now=1.0)
    assert p.pace("a", 1.0) == pytest.approx(39.5 / (1.0 + 0.99 - 0.05))


def test_the_first_episode_leaves_out_the_time_nothing_waited() -> None:
    # Nothing waited between the sends: the server's bucket may have overflowed then,
    # so only the announced wait counts and the estimate errs high (one more episode).
    p = Pauses()
    _first_push(p, 40, pushing=False)
    assert p.pace("a", 1.0) == pytest.approx(40.5 / 1.0)


def test_no_first_episode_pace_after_a_send_closer_than_the_wait() -> None:
    # The key's entry was dropped (idle) 0.6 s after a send: the server's bucket may
    # not have refilled, so the first episode of the new entry teaches nothing.
    p = Pauses()
    p.begin("a", 0.0)
    p.sent("a", 0.0)
    p.answered("a", 0.0, 0.0)
    assert p.remaining("a", 0.1) == 0.0
    assert "a" not in p._keys
    p.begin("a", 0.6)
    p.begin("a", 0.6)
    p.sent("a", 0.6)
    p.answered("a", 0.6, 0.6)
    p.sent("a", 0.7)
    p.throttled("a", 1.0, sent_at=0.7, now=0.71)
    assert p.pace("a", 0.71) is None


def test_a_second_episode_replaces_the_first_episode_pace() -> None:
    p = Pauses()
    _first_push(p, 40)
    p.begin("a", 1.0)  # the throttled request waits again: the key keeps pushing
    _answers(p, 2.0, 30)
    p.throttled("a", 1.0, sent_at=2.9, now=3.0)
    assert p.pace("a", 3.0) == pytest.approx(30.5 / 2.0)
    p.answered("a", 0.98, 1.01)  # a late answer from before the first episode no longer counts
    assert p.pace("a", 3.0) == pytest.approx(30.5 / 2.0)


def test_a_first_429_asking_for_no_wait_sent_before_the_first_answer_learns_nothing() -> None:
    # Two requests sent together; the first is answered, the second gets "Retry-After: 0".
    # The span the first-episode pace would be reckoned over is empty: no pace (it was a
    # division by zero that escaped the request).
    p = Pauses()
    p.begin("a", 0.0)
    p.begin("a", 0.0)
    p.sent("a", 0.0)
    p.sent("a", 0.0)
    p.answered("a", 0.0, 0.1)
    p.throttled("a", 0.0, sent_at=0.0, now=0.2)
    assert p.pace("a", 0.2) is None
    assert p.remaining("a", 0.2) == 0.0


async def test_a_retry_after_zero_to_concurrent_first_requests_reaches_the_caller() -> None:
    calls = 0

    async def api(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.01)
            return httpx.Response(200)
        if calls == 2:
            await asyncio.sleep(0.05)  # answered after the first one
            return httpx.Response(429, headers={"Retry-After": "0"})
        return httpx.Response(200)

    limiter = aiolease.RateLimiter(100, per=1.0, burst=10)
    transport = aiolease.httpx.LimitedTransport(limiter, wrapped=httpx.MockTransport(api))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        first, second = await asyncio.gather(client.get("/"), client.get("/"))
    assert (first.status_code, second.status_code) == (200, 200)
    assert calls == 3
    assert transport.pace("api.test") is None


@given(
    value=st.one_of(
        st.text(max_size=60),
        st.from_regex(r"\A\s*-?[0-9]{0,400}(\.[0-9]{0,20})?\s*\Z"),
        st.builds(
            lambda d, sep: sep.join([d, d]),
            st.sampled_from(
                ["7", "Wed, 21 Oct 2015 07:28:00 GMT", "Sun Nov  6 08:49:37 1994", "nan", "-1"]
            ),
            st.sampled_from([", ", ","]),
        ),
    ),
    date=st.one_of(st.none(), st.text(max_size=40), st.just("Wed, 21 Oct 99999 07:28:00 GMT")),
    field=st.sampled_from(["Retry-After", "RateLimit", "RateLimit-Reset"]),
)
@settings(max_examples=400, deadline=None)
def test_retry_delay_of_any_header_value_is_none_or_a_bounded_delay(
    value: str, date: str | None, field: str
) -> None:
    headers = {field: value} if date is None else {field: value, "Date": date}
    seconds = retry_delay(_getter(headers))
    assert seconds is None or 0.0 <= seconds <= 2.0**31


def test_a_retry_after_repeated_by_a_proxy_pauses_through_httpx() -> None:
    # httpx joins the two lines of the field: "2, 3".
    response = httpx.Response(429, headers=[("Retry-After", "2"), ("Retry-After", "3")])
    assert retry_delay(aiolease.httpx._header(response)) == 3.0


def test_a_unix_time_in_retry_after_is_read_as_one() -> None:
    # Some servers put the reset's Unix time where delta-seconds belong (as RateLimit-Reset
    # is tolerated to): read as seconds it paused the key for decades. No real wait is ten
    # years long, so a value past that is a Unix time, measured against the Date.
    headers = {"Date": "Fri, 31 Dec 1999 23:59:50 GMT", "Retry-After": "946684800"}
    assert retry_delay(_getter(headers)) == 10.0
    headers["Retry-After"] = "946684700"  # in the past: no wait
    assert retry_delay(_getter(headers)) == 0.0
    headers["Retry-After"] = "5, 946684800"  # repeated: each value read on its own
    assert retry_delay(_getter(headers)) == 10.0
    headers["Retry-After"] = str(10 * 365 * 86400)  # up to ten years: delta-seconds
    assert retry_delay(_getter(headers)) == 10 * 365 * 86400.0


@pytest.mark.parametrize(
    "field",
    [
        '"default";r=0;t={}',  # draft-08 and later
        "limit=10, remaining=0, reset={}",  # draft-07
    ],
)
def test_a_unix_time_in_the_ratelimit_field_is_read_as_one(field: str) -> None:
    # As Retry-After and RateLimit-Reset tolerate it: read as seconds, a Unix time in
    # t= (reset=) paused the key for decades.
    headers = {"Date": "Fri, 31 Dec 1999 23:59:50 GMT", "RateLimit": field.format(946684800)}
    assert retry_delay(_getter(headers)) == 10.0
    headers["RateLimit"] = field.format(10 * 365 * 86400)  # up to ten years: delta-seconds
    assert retry_delay(_getter(headers)) == 10 * 365 * 86400.0
