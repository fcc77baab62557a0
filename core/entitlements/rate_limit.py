"""The rate limit toward the entitlements service: one token bucket in Redis for the fleet.

Refilling and taking run in one Lua script timed by the Redis clock, so machines whose clocks
disagree still share one budget. Login syncs go first: bulk callers leave a reserve of tokens
that only interactive callers may take.
"""

import random
import time

from django.conf import settings
from redis.commands.core import Script

from core import metrics
from core.entitlements._upstream import Priority, redis_connection, redis_key, seconds_to_ms

# This module's scripts are registered with no client (None, which redis-py's hints do not
# allow): each call passes the client it runs on.

# The bucket's tokens now, refilled at `rate` since its last use (Redis clock, in seconds).
# KEYS: bucket hash. ARGV[1]: rate per second, ARGV[2]: burst.
_REFILLED_TOKENS = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1]) or burst
local at = tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
"""

# KEYS: bucket hash. ARGV: rate per second, burst, tokens that must remain after taking one
# (0 for interactive callers, the reserve for bulk ones), key ttl ms.
# Returns {1 if granted else 0, seconds to wait before a token may be there, as a string}.
_TAKE_TOKEN = Script(
    None,  # type: ignore[arg-type]
    (
        _REFILLED_TOKENS
        + """
local keep = tonumber(ARGV[3])
local granted = 0
local wait = 0
if tokens - 1 >= keep then
  tokens = tokens - 1
  granted = 1
else
  wait = (keep + 1 - tokens) / rate
end
-- Six decimals keep the stored time exact to the microsecond (tostring keeps 14 digits).
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
  'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {granted, string.format('%.6f', wait)}
"""
    ).encode(),
)

# Returns the tokens in the bucket now, as a string (the burst when the bucket is untouched).
_PEEK_TOKENS = Script(None, (_REFILLED_TOKENS + "return string.format('%.6f', tokens)").encode())  # type: ignore[arg-type]


class RedisRateLimiter:
    """A token bucket shared by every process through Redis, with a reserve for logins."""

    def __init__(self, *, per_second: float, burst: int, interactive_reserve: float) -> None:
        self.per_second = per_second
        self.burst = burst
        self.reserved_tokens = burst * interactive_reserve
        self._key = redis_key("rate")
        # Past this, an untouched bucket is full anyway: the key can go.
        self._ttl_ms = seconds_to_ms(burst / per_second) + 1000

    def acquire(self, *, priority: Priority, timeout: float) -> bool:
        """Take one token, sleeping until one is there for this priority; False on timeout."""
        keep = 0 if priority == Priority.INTERACTIVE else self.reserved_tokens
        started = time.monotonic()
        deadline = started + timeout
        while True:
            granted, wait = _TAKE_TOKEN(
                [self._key],
                [self.per_second, self.burst, keep, self._ttl_ms],
                client=redis_connection(),
            )
            remaining = deadline - time.monotonic()
            if granted or remaining <= 0:
                metrics.rate_limit_waited(priority=priority, seconds=time.monotonic() - started)
                return bool(granted)
            # Jitter spreads the waiters that all computed the same refill moment.
            time.sleep(min(remaining, float(wait) * (1 + random.random() / 4)))  # noqa: S311

    def state(self) -> dict:
        """The bucket as operators see it (JSON-able)."""
        tokens = _PEEK_TOKENS([self._key], [self.per_second, self.burst], client=redis_connection())
        return {
            "enabled": True,
            "per_second": self.per_second,
            "burst": self.burst,
            "reserved_for_interactive": self.reserved_tokens,
            "tokens": round(float(tokens), 2),
        }


class UnlimitedRateLimiter:
    """No rate limit: `ENTITLEMENTS_RATE_LIMIT_PER_SECOND` is 0."""

    def acquire(self, *, priority: Priority, timeout: float) -> bool:
        """Always grant at once."""
        return True

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
