"""The rate limit toward the entitlements service: one paced schedule in Redis for the fleet.

The budget is a schedule (GCRA, "virtual scheduling"): `tat` is the moment up to which the
fleet's calls have used the rate, each call moving it on by one interval (1 / rate). It runs
in one Lua script per call, timed by the Redis clock, so machines whose clocks disagree still
share one budget.

- A bulk call (a full run) books the next free slot, `max(now, tat)`, and sleeps until it:
  bulk calls go out evenly spaced at the rate, never earlier than the schedule, so a run does
  not burst after an idle spell nor at each batch start, and its sleepers wake one at a time.
  Bulk may book at most `burst - reserve - 1` intervals ahead; past that it waits to book.
- An interactive call (a login) goes at once while the schedule is at most `burst - 1`
  intervals ahead of now, i.e. it jumps ahead of the slots bulk callers booked, using the
  `reserve` intervals bulk may not book. Logins never queue behind a run.

Why a reserve of slots rather than a share of the rate (bulk at rate x (1 - reserve)): a run
then takes the whole rate when nobody logs in (10,000 users in 200 s at 50/s, not 250 s), and
each login still pushes the run's next slots back by one interval, so over any stretch of
T seconds the fleet sends at most `rate x T + burst` calls, and bulk calls alone at most
`rate x T + 1`.
"""

import random
import time
from collections.abc import Callable

from django.conf import settings
from redis.commands.core import Script

from core import metrics
from core.entitlements._upstream import Priority, redis_connection, redis_key

# This module's scripts are registered with no client (None, which redis-py's hints do not
# allow): each call passes the client it runs on.

# Times are microseconds since the epoch: whole numbers up to 2^53 stay exact in Lua's doubles,
# seconds with six decimals would not.
_REDIS_TIME_US = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# The schedule as Lua functions: `_TAKE_SLOT` runs take_slot alone, the upstream guard's
# admission inside its one script with the breaker's admission and the batch user's lock.
TAKE_SLOT_LUA = """
-- How far (us) the schedule at `key` runs ahead of `now` (us).
local function schedule_ahead(key, now)
  local tat = tonumber(redis.call('HGET', key, 'tat')) or now
  return math.max(0, tat - now)
end
-- Take one slot at `now` (us). Arguments, as RedisRateLimiter._slot_arguments makes them:
-- interval between calls (us); how far ahead the schedule may be for this caller to take a
-- slot (us); '1' to book a future slot and sleep until it (bulk), '0' to go now or not at all
-- (interactive); the longest the caller may sleep for its slot (us); key ttl (ms).
-- Returns 1 if granted else 0, and the us to sleep: until the slot if granted, else before
-- asking again.
local function take_slot(key, now, interval, tolerance, books_ahead, longest_sleep, ttl_ms)
  interval = tonumber(interval)
  local ahead = schedule_ahead(key, now)
  if ahead > tonumber(tolerance) then
    return 0, string.format('%.0f', ahead - tonumber(tolerance))
  end
  local sleep = 0
  if books_ahead == '1' then
    sleep = ahead
    if sleep > tonumber(longest_sleep) then
      return 0, string.format('%.0f', sleep)
    end
  end
  redis.call('HSET', key, 'tat', string.format('%.0f', now + ahead + interval))
  -- Once the schedule is back to now, an absent key means the same: it can go.
  redis.call('PEXPIRE', key, math.floor((ahead + interval) / 1000) + tonumber(ttl_ms))
  return 1, string.format('%.0f', sleep)
end
"""

# KEYS: schedule hash. ARGV: take_slot's arguments. Returns {1 if granted else 0, us to sleep}.
_TAKE_SLOT = Script(
    None,  # type: ignore[arg-type]
    (
        _REDIS_TIME_US
        + TAKE_SLOT_LUA
        + """
local granted, sleep = take_slot(KEYS[1], now, unpack(ARGV))
return {granted, sleep}
"""
    ).encode(),
)

# Returns how far the schedule runs ahead of now, in us, as a string.
_PEEK_AHEAD = Script(
    None,  # type: ignore[arg-type]
    (
        _REDIS_TIME_US
        + TAKE_SLOT_LUA
        + "return string.format('%.0f', schedule_ahead(KEYS[1], now))"
    ).encode(),
)

_US = 1_000_000

# What asking for a slot tells: granted or not, and the seconds to sleep (until the slot if
# granted, else before asking again).
SlotReply = tuple[bool, float]


def slot_reply(granted: int, sleep_us: bytes | int) -> SlotReply:
    """What take_slot's reply (TAKE_SLOT_LUA) stands for."""
    return bool(granted), float(sleep_us) / _US


def schedule_key() -> str:
    """The Redis key of the fleet's schedule (TAKE_SLOT_LUA's key)."""
    return redis_key("rate")


class RedisRateLimiter:
    """A paced schedule shared by every process through Redis, with a reserve for logins."""

    def __init__(self, *, per_second: float, burst: int, interactive_reserve: float) -> None:
        self.per_second = per_second
        self.burst = burst
        self.reserved_tokens = burst * interactive_reserve
        self._interval_us = _US / per_second
        # A login may go while the schedule is up to burst - 1 intervals ahead; bulk books its
        # slots up to the reserve short of that, so the reserve is always there for logins.
        self._tolerance_us = {
            Priority.INTERACTIVE: (burst - 1) * self._interval_us,
            Priority.BULK: max(0.0, burst - 1 - self.reserved_tokens) * self._interval_us,
        }
        self._key = schedule_key()
        self._ttl_ms = 1000

    def acquire(self, *, priority: Priority, timeout: float) -> bool:
        """Take one slot, sleeping until it (bulk) or until one is there; False on timeout."""
        return self.wait_for_slot(priority=priority, timeout=timeout, take=self._take_slot)

    def wait_for_slot(
        self, *, priority: Priority, timeout: float, take: Callable[[list], SlotReply]
    ) -> bool:
        """Ask `take` for a slot until it grants one, sleeping as the schedule says; False on
        timeout.

        `take` runs take_slot (TAKE_SLOT_LUA) with the arguments it is given: alone for
        `acquire`, inside the upstream guard's admission script, which ends the wait by raising
        when the call is refused for another reason (the circuit is open, the lock is held).
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            granted, sleep = take(self._slot_arguments(priority, deadline - time.monotonic()))
            if granted:
                # A booked slot is ours alone: sleep until it, to the microsecond, no jitter.
                time.sleep(sleep)
                metrics.rate_limit_waited(priority=priority, seconds=time.monotonic() - started)
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                metrics.rate_limit_waited(priority=priority, seconds=time.monotonic() - started)
                return False
            # Jitter spreads the waiters that all computed the same moment; whoever asks first
            # then books the next slot, so waking order, not timing, is what it changes.
            time.sleep(min(remaining, sleep * (1 + random.random() / 4)))  # noqa: S311

    def _slot_arguments(self, priority: Priority, longest_sleep: float) -> list:
        """take_slot's arguments after its key and the time, for one ask of this caller."""
        return [
            f"{self._interval_us:.3f}",
            f"{self._tolerance_us[priority]:.3f}",
            int(priority == Priority.BULK),
            max(0, int(longest_sleep * _US)),
            self._ttl_ms,
        ]

    def _take_slot(self, arguments: list) -> SlotReply:
        granted, sleep_us = _TAKE_SLOT([self._key], arguments, client=redis_connection())
        return slot_reply(granted, sleep_us)

    def state(self) -> dict:
        """The schedule as operators see it (JSON-able).

        `tokens` is the budget not yet spent or booked: the burst minus the intervals the
        schedule runs ahead. During a full run it stays above the reserve: the run books its
        slots (`booked_ahead_seconds`) and the rest is the logins'.
        """
        ahead_us = float(_PEEK_AHEAD([self._key], [], client=redis_connection()))
        return {
            "enabled": True,
            "per_second": self.per_second,
            "burst": self.burst,
            "reserved_for_interactive": self.reserved_tokens,
            "tokens": round(max(0.0, self.burst - ahead_us / self._interval_us), 2),
            "booked_ahead_seconds": round(ahead_us / _US, 3),
        }


class UnlimitedRateLimiter:
    """No rate limit: `ENTITLEMENTS_RATE_LIMIT_PER_SECOND` is 0."""

    def acquire(self, *, priority: Priority, timeout: float) -> bool:
        """Always grant at once."""
        return True

    def wait_for_slot(
        self, *, priority: Priority, timeout: float, take: Callable[[list], SlotReply]
    ) -> bool:
        """Ask `take` once, with no slot arguments: there is no slot to take."""
        granted, _sleep = take([])
        return granted

    def state(self) -> dict:
        """The (absent) limit as operators see it."""
        return {"enabled": False}


def get_rate_limiter() -> RedisRateLimiter | UnlimitedRateLimiter:
    """The rate limiter for the current settings."""
    per_second = settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND
    if per_second <= 0:
        return UnlimitedRateLimiter()
    return RedisRateLimiter(
        per_second=per_second,
        burst=settings.ENTITLEMENTS_RATE_LIMIT_BURST,
        interactive_reserve=settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE,
    )
