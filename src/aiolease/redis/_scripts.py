"""Lua scripts of :mod:`aiolease.redis` (kept in Python so packaging cannot lose them).

Every script reads "now" the same way (the ``_CLOCK`` preamble): ``ARGV[1] == "s"`` asks for the
server's clock (``TIME``) so that every client shares one clock whatever their own clocks say;
otherwise, or on servers older than 3.2 where a script may not write after calling ``TIME``, the
client's wall-clock time passed in ``ARGV[2]`` is used (see docs/redis.md, "Clock").

Rate-limiter state is ONE string key holding five numbers (microseconds, ``%.17g`` so they
round-trip exactly through Redis)::

    slot  tat  hold  epoch  paused_until

``tat``   GCRA's theoretical arrival time: the key admits cost ``c`` at time ``t`` iff
          ``max(tat, t) + c*T - t <= burst*T``; admission moves it to ``max(tat, t) + c*T``.
``slot``  admission time of the latest reservation that had to wait (or the end of a pause);
``hold``  ``tat`` right after that reservation. While ``slot`` is in the future, a refund never
          lowers ``tat`` below ``hold``: that waiter's slot was computed from it, so a newcomer
          cannot be scheduled on top of it (which would exceed the window bound).
``epoch`` changes whenever the chain of debts restarts (``tat`` had run out); a settle refund
          applies only while the epoch it was charged in is still current - otherwise the charge
          was already "absorbed" and refunding it would admit more than the bound.
``paused_until``  nothing is admitted before it (``pause``); GCRA then resumes from it.

The key expires (``PX``) when its debt runs out, at which point it is equivalent to no state.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "CONC_ACQUIRE",
    "CONC_CANCEL",
    "CONC_COUNT",
    "CONC_RENEW",
    "RATE_ACQUIRE",
    "RATE_CANCEL",
    "RATE_PAUSE",
    "RATE_SETTLE",
    "RATE_SHIFT",
    "Script",
]


class Script:
    """A Lua source with its SHA1 (the EVALSHA handle)."""

    __slots__ = ("name", "sha", "sha_b", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self.sha_b = self.sha.encode()

    def __repr__(self) -> str:
        return f"<Script {self.name} {self.sha[:8]}>"


_CLOCK = """
local now
if ARGV[1] == 's' and redis.replicate_commands then
  -- Redis 3.2-4.x replicate scripts verbatim by default and refuse writes after a
  -- non-deterministic command such as TIME unless effects replication is switched on here.
  -- From 5.0 effects replication is the default (7.0: the only mode, and the call - deprecated,
  -- a no-op - costs a third of this script's run time, so 7.0+ (REDIS_VERSION_NUM) skips it).
  if not redis.REDIS_VERSION_NUM then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = math.floor(tonumber(ARGV[2]))
end
local function f(x) return string.format('%.17g', x) end
"""

_RATE_STATE = """
local T = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local old = redis.call('GET', KEYS[1])
local slot, tat, hold, epoch, pu = 0, now, 0, now, 0
if old then
  local v = {}
  for x in string.gmatch(old, '%S+') do v[#v + 1] = tonumber(x) end
  slot, tat, hold, epoch, pu = v[1], v[2], v[3], v[4], v[5]
end
local function store()
  local s = f(slot) .. ' ' .. f(tat) .. ' ' .. f(hold) .. ' ' .. f(epoch) .. ' ' .. f(pu)
  local horizon = tat
  if pu > horizon then horizon = pu end
  redis.call('SET', KEYS[1], s, 'PX', math.ceil((horizon - now) / 1000) + 1)
  return s
end
"""

#: ARGV: clock, client_now_us, T_us, burst, cost, max_wait_us (< 0: no limit).
#: Replies (kept tiny: parsing a reply is a large part of the client's cost per call):
#:   an integer >= 0       admitted now; the value is the epoch (for settle);
#:   an integer < 0        not admitted within max_wait, nothing reserved: -(wait_us + 1);
#:   {wait_us, previous_state|nil, new_state}   reserved; the caller sleeps wait_us.
RATE_ACQUIRE = Script(
    "rate_acquire",
    _CLOCK
    + _RATE_STATE
    + """
local cost = tonumber(ARGV[5])
local max_wait = tonumber(ARGV[6])
if tat <= now then tat = now; epoch = now end
local wait = tat + cost * T - burst * T - now
if pu - now > wait then wait = pu - now end
if wait < 0 then wait = 0 end
if max_wait >= 0 and wait > max_wait then return -math.ceil(wait) - 1 end
-- Admitted at a = now + wait. Normally a <= tat; after a pause a may be later, and GCRA
-- resumes from a (the debts before it were absorbed by the pause: a new epoch).
if tat < now + wait then tat = now + wait; epoch = now end
tat = tat + cost * T
if wait <= 0 then
  store()
  return epoch
end
slot = now + wait
hold = tat
return {math.ceil(wait), old or false, store()}
""",
)

#: Give a reservation back. ARGV: previous_state ('' = none), state_after_reservation.
#: Exact compare-and-swap: only when nothing happened on the key since the reservation (it is the
#: last one) is the state restored; otherwise later reservations were scheduled after it and
#: lowering the debt could put a newcomer on top of them. Returns 1 when refunded.
RATE_CANCEL = Script(
    "rate_cancel",
    """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
else
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 1 then ttl = 1 end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
end
return 1
""",
)

#: Give back a reservation that is NOT the last one, moving every later reservation up.
#: ARGV: clock, client_now_us, T_us, burst, expected_state, cost, tat_before_us.
#: The caller (one limiter object) passes the state it last wrote itself; it only calls this when
#: every reservation made on the key after the cancelled one is its own (it re-times them), and
#: the cancelled one was scheduled by plain GCRA (same epoch: no pause jump, no restart). Then,
#: if the state is still exactly ``expected_state`` (compare-and-swap: nobody else wrote since),
#: ``tat`` and ``hold`` move back by cost*T - the schedule in which the cancelled reservation was
#: never made - provided the debt before it (``tat_before_us``) has not run out (``now`` is
#: before it), so that every later reservation was chained on it. ``slot`` is kept (a later
#: value only makes refunds wait longer). Returns the new state, or nil when nothing changed.
RATE_SHIFT = Script(
    "rate_shift",
    _CLOCK
    + _RATE_STATE
    + """
if old ~= ARGV[5] then return false end
if now > tonumber(ARGV[7]) then return false end
local shift = tonumber(ARGV[6]) * T
tat = tat - shift
hold = hold - shift
return store()
""",
)

#: Charge (delta > 0) or refund (delta < 0) cost units after the fact.
#: ARGV: clock, client_now_us, T_us, burst, delta, epoch_of_the_reservation.
#: Returns the delta actually applied (as a string).
RATE_SETTLE = Script(
    "rate_settle",
    _CLOCK
    + _RATE_STATE
    + """
local delta = tonumber(ARGV[5])
if delta > 0 then
  if tat <= now then tat = now; epoch = now end
  tat = tat + delta * T
  store()
  return f(delta)
end
if not old or f(epoch) ~= ARGV[6] then return '0' end
local floor = now
if slot > now and hold > floor then floor = hold end
local target = tat + delta * T
if target < floor then target = floor end
if target >= tat then return '0' end
local applied = (target - tat) / T
tat = target
store()
return f(applied)
""",
)

#: Nothing is admitted before now + pause (extends, never shortens).
#: ARGV: clock, client_now_us, T_us, burst, pause_us, expected_state, restored_state.
#: The pausing object's sleeping waiters give their reservations back: when ``expected_state``
#: is not empty and the key holds exactly it (compare-and-swap, as in RATE_CANCEL: nobody else
#: wrote since the caller's last write), the state from before the oldest of those reservations
#: (``restored_state``, '' = none) is restored first - the caller only asks when every
#: reservation made since that state is one of the waiters it re-queues, so none of them is ever
#: admitted on it. A pause already in force is kept either way.
#: Returns 2 when reservations were given back, else 1 when the pause was extended, else 0.
RATE_PAUSE = Script(
    "rate_pause",
    _CLOCK
    + _RATE_STATE
    + """
local given = 0
if ARGV[6] ~= '' and old == ARGV[6] then
  given = 2
  local held = pu
  slot, tat, hold, epoch, pu = 0, now, 0, now, 0
  if ARGV[7] ~= '' then
    local v = {}
    for x in string.gmatch(ARGV[7], '%S+') do v[#v + 1] = tonumber(x) end
    slot, tat, hold, epoch, pu = v[1], v[2], v[3], v[4], v[5]
  end
  if held > pu then pu = held end
end
local extended = 0
local until_ = now + tonumber(ARGV[5])
if until_ > pu then
  pu = until_
  extended = 1
end
if given + extended > 0 then store() end
if given > 0 then return given end
return extended
""",
)

# Concurrency limiter: KEYS = holders (zset id -> lease expiry ms), queue (zset id -> arrival
# sequence), heartbeats (zset id -> waiter expiry ms), sequence counter, withdrawn ids (zset id ->
# expiry ms: an acquire script that reaches Redis after its own withdrawal takes nothing).
# ARGV: clock, client_now_us, limit, ttl_ms, channel, then per script.
# ``fill`` purges expired leases and waiters, then hands free slots to the oldest waiters directly
# (FIFO hand-off: a newcomer cannot barge in front of a queued waiter) and PUBLISHes each granted
# id so that the process holding that waiter wakes it. Every key is re-expired on each call: the
# whole structure vanishes ttl after its last use.
_CONC = """
local ms = math.floor(now / 1000)
local limit = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local channel = ARGV[5]
local H, Q, E, N, G = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function fill()
  redis.call('ZREMRANGEBYSCORE', H, '-inf', ms)
  local dead = redis.call('ZRANGEBYSCORE', E, '-inf', ms)
  for i = 1, #dead do redis.call('ZREM', Q, dead[i]) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', E, '-inf', ms) end
  local free = limit - redis.call('ZCARD', H)
  while free > 0 do
    local head = redis.call('ZRANGE', Q, 0, 0)
    if #head == 0 then break end
    -- The lease lasts as long as the waiter's heartbeat would have: a waiter whose process
    -- died must not hold the slot longer than lease_ttl after its last sign of life (its
    -- process, when alive, renews the lease within lease_ttl / 3).
    local beat = tonumber(redis.call('ZSCORE', E, head[1])) or (ms + ttl)
    redis.call('ZREM', Q, head[1])
    redis.call('ZREM', E, head[1])
    redis.call('ZADD', H, beat, head[1])
    redis.call('PUBLISH', channel, head[1])
    free = free - 1
  end
end
local function touch()
  for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl * 2 + 1000) end
end
local function hint()
  local first = redis.call('ZRANGE', H, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) - ms end
  return ttl
end
"""


def _conc(body: str) -> str:
    return _CLOCK + _CONC + body


#: ARGV[6] = lease id, ARGV[7] = 'w' (may queue) or 'n' (nowait).
#: Returns {1, 0} when the id holds a slot, else {0, ms until the earliest lease expires}.
CONC_ACQUIRE = Script(
    "conc_acquire",
    _conc(
        """
local id = ARGV[6]
fill()
if redis.call('ZSCORE', H, id) then
  redis.call('ZADD', H, ms + ttl, id)
  touch()
  return {1, 0}
end
if not redis.call('ZSCORE', Q, id) then
  -- Withdrawn already: this script was sent before the withdrawal but overtaken by it (sent on
  -- a connection that was dropped after a timeout, the withdrawal on a fresh one).
  if redis.call('ZSCORE', G, id) then return {0, hint()} end
  if redis.call('ZCARD', Q) == 0 and redis.call('ZCARD', H) < limit then
    redis.call('ZADD', H, ms + ttl, id)
    touch()
    return {1, 0}
  end
  if ARGV[7] == 'n' then return {0, hint()} end
  redis.call('ZADD', Q, redis.call('INCR', N), id)
end
redis.call('ZADD', E, ms + ttl, id)
touch()
return {0, hint()}
"""
    ),
)

#: Release a held slot or withdraw a waiter (ARGV[6] = id); a slot handed to a waiter that gave
#: up in the meantime is passed on. ARGV[7] = 'w' for a withdrawal: a script of that acquisition
#: may still be on its way (its outcome was unknown), so the id is remembered as withdrawn for as
#: long as the keys live, and that script takes nothing when it comes. Returns 1 when the id held
#: a slot.
CONC_CANCEL = Script(
    "conc_cancel",
    _conc(
        """
local id = ARGV[6]
redis.call('ZREM', Q, id)
redis.call('ZREM', E, id)
local held = redis.call('ZREM', H, id)
if ARGV[7] == 'w' then
  redis.call('ZREMRANGEBYSCORE', G, '-inf', ms)
  redis.call('ZADD', G, ms + ttl * 2 + 1000, id)
  redis.call('PEXPIRE', G, ttl * 2 + 1000)
end
fill()
touch()
return held
"""
    ),
)

#: Renew leases and waiter heartbeats. ARGV[6] = number of held ids, then the held ids, then the
#: waiting ids. Returns {lost held ids, granted waiting ids, waiting ids no longer queued}.
CONC_RENEW = Script(
    "conc_renew",
    _conc(
        """
local nheld = tonumber(ARGV[6])
local lost, granted, dropped = {}, {}, {}
fill()
for i = 7, 6 + nheld do
  if redis.call('ZSCORE', H, ARGV[i]) then
    redis.call('ZADD', H, ms + ttl, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
for i = 7 + nheld, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', H, id) then
    redis.call('ZADD', H, ms + ttl, id)
    granted[#granted + 1] = id
  elseif redis.call('ZSCORE', Q, id) then
    redis.call('ZADD', E, ms + ttl, id)
  else
    dropped[#dropped + 1] = id
  end
end
touch()
return {lost, granted, dropped}
"""
    ),
)

#: Holders of the key now, after purging expired leases and waiters (``in_use``).
CONC_COUNT = Script(
    "conc_count",
    _conc(
        """
fill()
touch()
return redis.call('ZCARD', H)
"""
    ),
)
