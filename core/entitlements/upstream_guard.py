"""Upstream protection for the entitlements service: a shared circuit breaker and rate limit.

Both are shared through Redis by every worker process on every machine. The engine wraps each
request to the upstream in `guarded_upstream_call`. With django-redis as the default cache,
the breaker and the token bucket live in Redis, their transitions run as Lua scripts (atomic,
timed by the Redis clock, so machines with skewed clocks agree), and the keys are namespaced
with the cache's KEY_PREFIX read at call time. With the embedded default (file cache, no
Redis) the breaker is kept per process and the rate limit is off: a single-machine demo has
no shared store that could bound the combined rate.

If Redis itself fails, the guard lets the call through and logs a warning: protecting the
upstream is not worth refusing every sync while the shared store is down.
"""

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from django.conf import settings
from django.core.cache import caches
from django_redis import get_redis_connection
from redis.commands.core import Script
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

_REDIS_CACHE_BACKEND = "django_redis.cache.RedisCache"
# An abandoned open circuit (no caller for a day) may expire: the next failures re-open it.
_OPEN_STATE_RETENTION_MS = 24 * 3600 * 1000


class Priority(StrEnum):
    """Who is asking: login syncs go before bulk (periodic, admin-wide) syncs."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


# How long a caller may sleep for a token before giving up. Bulk syncs wait longer: waiting in
# the worker is what paces a full run. A login sync that found no token in 10 s (the fleet is
# saturated by logins alone) is better retried than left holding an interactive worker.
_MAX_WAIT_SECONDS = {Priority.INTERACTIVE: 10.0, Priority.BULK: 30.0}


class CircuitState(StrEnum):
    """The three states of the circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class UpstreamGuardError(Exception):
    """A call to the upstream was not made; `code` says why."""

    code = "upstream_guard"


class CircuitOpenError(UpstreamGuardError):
    """The circuit is open: the upstream failed repeatedly and is left alone for a cool-down."""

    code = "circuit_open"

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"entitlements circuit open, retry in {retry_after:.1f} s")
        self.retry_after = retry_after


class RateLimitTimeoutError(UpstreamGuardError):
    """No token of the shared rate limit became available within the caller's wait."""

    code = "rate_limited"

    def __init__(self, waited: float) -> None:
        super().__init__(f"entitlements rate limit: no token after {waited:.1f} s")
        self.waited = waited


@dataclass(frozen=True)
class Admission:
    """The breaker's answer to one caller; true when the call may go."""

    allowed: bool
    # Set when this caller won the single half-open probe; give it back with `release`.
    probe_token: str | None = None
    retry_after: float = 0.0

    def __bool__(self) -> bool:
        return self.allowed


# --- Settings and Redis access ----------------------------------------------------------------


def _key(name: str) -> str:
    """Namespace a Redis key with the cache prefix, read now so per-test prefixes apply."""
    prefix = caches["default"].key_prefix
    return f"{prefix}:entitlements:upstream:{name}" if prefix else f"entitlements:upstream:{name}"


def _uses_redis() -> bool:
    return settings.CACHES["default"]["BACKEND"] == _REDIS_CACHE_BACKEND


def _redis():
    return get_redis_connection("default")


def _seconds_to_ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


# --- Circuit breaker --------------------------------------------------------------------------

# KEYS: state hash, failures sorted set, probe key. Time is the Redis clock in milliseconds.
_REDIS_TIME_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV: probe token, probe ttl ms. Returns {verdict, ms until reopening or probe expiry}.
_ALLOW = Script(
    None,
    (
        _REDIS_TIME_MS
        + """
local reopens_at = tonumber(redis.call('HGET', KEYS[1], 'reopens_at'))
if not reopens_at then return {'closed', 0} end
if now < reopens_at then return {'open', reopens_at - now} end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'probe', 0} end
return {'open', redis.call('PTTL', KEYS[3])}
"""
    ).encode(),
)

# ARGV: threshold, window ms, cool-down ms, failure id, retention ms.
# Returns {transition, failures in a row, reopens_at ms}.
_RECORD_FAILURE = Script(
    None,
    (
        _REDIS_TIME_MS
        + """
local threshold = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cooldown = tonumber(ARGV[3])
local reopens_at = tonumber(redis.call('HGET', KEYS[1], 'reopens_at'))
if reopens_at then
  if now < reopens_at then return {'ignored', 0, reopens_at} end
  -- Half-open: the probe (or a straggler) failed, so the upstream is still down.
  reopens_at = now + cooldown
  redis.call('HSET', KEYS[1], 'reopens_at', reopens_at)
  redis.call('HINCRBY', KEYS[1], 'reopenings', 1)
  redis.call('PEXPIRE', KEYS[1], cooldown + tonumber(ARGV[5]))
  redis.call('DEL', KEYS[3])
  return {'reopened', 0, reopens_at}
end
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
redis.call('PEXPIRE', KEYS[2], window)
local failures = redis.call('ZCARD', KEYS[2])
if failures < threshold then return {'counted', failures, 0} end
reopens_at = now + cooldown
redis.call('HSET', KEYS[1], 'reopens_at', reopens_at, 'opened_at', now, 'reopenings', 0)
redis.call('PEXPIRE', KEYS[1], cooldown + tonumber(ARGV[5]))
redis.call('DEL', KEYS[2])
return {'opened', failures, reopens_at}
"""
    ).encode(),
)

# Returns the transition: 'closed' when a half-open circuit closes, else 'none'.
_RECORD_SUCCESS = Script(
    None,
    (
        _REDIS_TIME_MS
        + """
local reopens_at = tonumber(redis.call('HGET', KEYS[1], 'reopens_at'))
if not reopens_at then
  -- A success breaks the run of failures: sporadic errors under load never open the circuit.
  redis.call('DEL', KEYS[2])
  return 'none'
end
if now < reopens_at then return 'none' end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 'closed'
"""
    ).encode(),
)

# ARGV: probe token. Gives the probe back only if this caller still holds it.
_RELEASE_PROBE = Script(
    None,
    b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)

# Returns {reopens_at ms or -1, failures in a row, reopenings, now ms, probe held 0/1}.
_CIRCUIT_STATE = Script(
    None,
    (
        _REDIS_TIME_MS
        + """
local window = tonumber(ARGV[1])
local reopens_at = tonumber(redis.call('HGET', KEYS[1], 'reopens_at')) or -1
local reopenings = tonumber(redis.call('HGET', KEYS[1], 'reopenings')) or 0
local failures = redis.call('ZCOUNT', KEYS[2], now - window, '+inf')
return {reopens_at, failures, reopenings, now, redis.call('EXISTS', KEYS[3])}
"""
    ).encode(),
)


def _circuit_settings() -> tuple[int, float, float]:
    return (
        settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD,
        settings.ENTITLEMENTS_CIRCUIT_WINDOW_SECONDS,
        settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS,
    )


def _log_transition(transition: str, *, failures: int, reopens_in: float) -> None:
    # Operators follow the circuit in the worker logs; nothing here names a user.
    if transition == "opened":
        logger.warning(
            "entitlements circuit opened after %d failures in a row; calls refused for %.1f s",
            failures,
            reopens_in,
        )
    elif transition == "reopened":
        logger.warning(
            "entitlements circuit re-opened: the probe call failed; calls refused for %.1f s",
            reopens_in,
        )
    elif transition == "closed":
        logger.info("entitlements circuit closed: the probe call succeeded")


class RedisCircuitBreaker:
    """The circuit breaker shared by every process through Redis."""

    def __init__(self) -> None:
        self._keys = [_key("circuit"), _key("circuit:failures"), _key("circuit:probe")]

    def allow(self) -> Admission:
        """Admit a call when closed, or as the single probe once the cool-down is over."""
        _threshold, _window, cooldown = _circuit_settings()
        token = uuid.uuid4().hex
        verdict, wait_ms = _ALLOW(self._keys, [token, _seconds_to_ms(cooldown)], client=_redis())
        if verdict == b"closed":
            return Admission(allowed=True)
        if verdict == b"probe":
            return Admission(allowed=True, probe_token=token)
        return Admission(allowed=False, retry_after=max(0, wait_ms) / 1000)

    def release(self, admission: Admission) -> None:
        """Give back an unused probe so another caller can probe at once."""
        if admission.probe_token:
            _RELEASE_PROBE([self._keys[2]], [admission.probe_token], client=_redis())

    def record_success(self) -> None:
        """Report that the upstream answered: ends a run of failures, closes a half-open circuit."""
        if _RECORD_SUCCESS(self._keys, client=_redis()) == b"closed":
            _log_transition("closed", failures=0, reopens_in=0)

    def record_failure(self) -> None:
        """Report a transient upstream failure (5xx, 429, timeout, connection refused)."""
        threshold, window, cooldown = _circuit_settings()
        transition, failures, _reopens_at = _RECORD_FAILURE(
            self._keys,
            [
                threshold,
                _seconds_to_ms(window),
                _seconds_to_ms(cooldown),
                uuid.uuid4().hex,
                _OPEN_STATE_RETENTION_MS,
            ],
            client=_redis(),
        )
        _log_transition(transition.decode(), failures=failures, reopens_in=cooldown)

    def state(self) -> dict:
        """The circuit as operators see it (JSON-able)."""
        _threshold, window, _cooldown = _circuit_settings()
        reopens_at, failures, reopenings, now, probing = _CIRCUIT_STATE(
            self._keys, [_seconds_to_ms(window)], client=_redis()
        )
        return _state_dict(
            reopens_at_ms=None if reopens_at < 0 else reopens_at,
            now_ms=now,
            failures=failures,
            reopenings=reopenings,
            probing=bool(probing),
            shared=True,
        )


@dataclass
class _ProcessCircuit:
    failures: list[float]
    reopens_at: float | None = None
    reopenings: int = 0
    probe_token: str | None = None
    probe_expires_at: float = 0.0


# One circuit per cache prefix, so tests that switch prefixes stay independent.
_process_circuits: dict[str, _ProcessCircuit] = {}
_process_lock = threading.Lock()


class ProcessCircuitBreaker:
    """The same breaker kept in this process's memory, for the embedded default without Redis."""

    def __init__(self) -> None:
        with _process_lock:
            self._circuit = _process_circuits.setdefault(
                _key("circuit"), _ProcessCircuit(failures=[])
            )

    def allow(self) -> Admission:
        """Admit a call when closed, or as the single probe once the cool-down is over."""
        _threshold, _window, cooldown = _circuit_settings()
        now = time.time()
        with _process_lock:
            circuit = self._circuit
            if circuit.reopens_at is None:
                return Admission(allowed=True)
            if now < circuit.reopens_at:
                return Admission(allowed=False, retry_after=circuit.reopens_at - now)
            if circuit.probe_token and now < circuit.probe_expires_at:
                return Admission(allowed=False, retry_after=circuit.probe_expires_at - now)
            circuit.probe_token = uuid.uuid4().hex
            circuit.probe_expires_at = now + cooldown
            return Admission(allowed=True, probe_token=circuit.probe_token)

    def release(self, admission: Admission) -> None:
        """Give back an unused probe so another caller can probe at once."""
        with _process_lock:
            if admission.probe_token and admission.probe_token == self._circuit.probe_token:
                self._circuit.probe_token = None

    def record_success(self) -> None:
        """Report that the upstream answered: ends a run of failures, closes a half-open circuit."""
        now = time.time()
        with _process_lock:
            circuit = self._circuit
            if circuit.reopens_at is None:
                circuit.failures.clear()
                return
            if now < circuit.reopens_at:
                return
            circuit.reopens_at = None
            circuit.reopenings = 0
            circuit.probe_token = None
            circuit.failures.clear()
        _log_transition("closed", failures=0, reopens_in=0)

    def record_failure(self) -> None:
        """Report a transient upstream failure (5xx, 429, timeout, connection refused)."""
        threshold, window, cooldown = _circuit_settings()
        now = time.time()
        with _process_lock:
            circuit = self._circuit
            if circuit.reopens_at is not None:
                if now < circuit.reopens_at:
                    return
                circuit.reopens_at = now + cooldown
                circuit.reopenings += 1
                circuit.probe_token = None
                transition, failures = "reopened", 0
            else:
                circuit.failures[:] = [t for t in circuit.failures if t > now - window]
                circuit.failures.append(now)
                failures = len(circuit.failures)
                if failures < threshold:
                    return
                circuit.reopens_at = now + cooldown
                circuit.failures.clear()
                transition = "opened"
        _log_transition(transition, failures=failures, reopens_in=cooldown)

    def state(self) -> dict:
        """The circuit as operators see it (JSON-able)."""
        _threshold, window, _cooldown = _circuit_settings()
        now = time.time()
        with _process_lock:
            circuit = self._circuit
            return _state_dict(
                reopens_at_ms=None if circuit.reopens_at is None else circuit.reopens_at * 1000,
                now_ms=now * 1000,
                failures=sum(1 for t in circuit.failures if t > now - window),
                reopenings=circuit.reopenings,
                probing=bool(circuit.probe_token) and now < circuit.probe_expires_at,
                shared=False,
            )


def _state_dict(
    *,
    reopens_at_ms: float | None,
    now_ms: float,
    failures: int,
    reopenings: int,
    probing: bool,
    shared: bool,
) -> dict:
    if reopens_at_ms is None:
        state = CircuitState.CLOSED
    elif now_ms < reopens_at_ms:
        state = CircuitState.OPEN
    else:
        state = CircuitState.HALF_OPEN
    return {
        "state": str(state),
        "failures": failures,
        "failure_threshold": settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD,
        "reopens_at": None
        if reopens_at_ms is None
        else datetime.fromtimestamp(reopens_at_ms / 1000, tz=UTC).isoformat(),
        "reopens_in": None if reopens_at_ms is None else max(0.0, (reopens_at_ms - now_ms) / 1000),
        "reopenings": reopenings,
        "probe_in_flight": probing,
        "shared": shared,
    }


def get_circuit_breaker() -> RedisCircuitBreaker | ProcessCircuitBreaker:
    """The breaker for the current settings: shared through Redis, else per process."""
    return RedisCircuitBreaker() if _uses_redis() else ProcessCircuitBreaker()


# --- Rate limit -------------------------------------------------------------------------------

# KEYS: bucket hash. ARGV: rate per second, burst, tokens that must remain after taking one
# (0 for interactive callers, the reserve for bulk ones), key ttl ms.
# Returns {1 if granted else 0, seconds to wait before a token may be there, as a string}.
_TAKE_TOKEN = Script(
    None,
    b"""
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local keep = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1]) or burst
local at = tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
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
""",
)

# Returns the tokens in the bucket now, as a string (the burst when the bucket is untouched).
_PEEK_TOKENS = Script(
    None,
    b"""
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1]) or burst
local at = tonumber(bucket[2]) or now
return string.format('%.6f', math.min(burst, tokens + math.max(0, now - at) * rate))
""",
)


class RedisRateLimiter:
    """A token bucket shared by every process through Redis, with a reserve for logins."""

    def __init__(self, *, per_second: float, burst: int, interactive_reserve: float) -> None:
        self.per_second = per_second
        self.burst = burst
        self.reserved_tokens = burst * interactive_reserve
        self._key = _key("rate")
        # Past this, an untouched bucket is full anyway: the key can go.
        self._ttl_ms = _seconds_to_ms(burst / per_second) + 1000

    def acquire(self, *, priority: Priority, timeout: float) -> bool:
        """Take one token, sleeping until one is there for this priority; False on timeout."""
        keep = 0 if priority == Priority.INTERACTIVE else self.reserved_tokens
        deadline = time.monotonic() + timeout
        while True:
            granted, wait = _TAKE_TOKEN(
                [self._key], [self.per_second, self.burst, keep, self._ttl_ms], client=_redis()
            )
            if granted:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Jitter spreads the waiters that all computed the same refill moment.
            time.sleep(min(remaining, float(wait) * (1 + random.random() / 4)))  # noqa: S311

    def state(self) -> dict:
        """The bucket as operators see it (JSON-able)."""
        tokens = _PEEK_TOKENS([self._key], [self.per_second, self.burst], client=_redis())
        return {
            "enabled": True,
            "per_second": self.per_second,
            "burst": self.burst,
            "reserved_for_interactive": self.reserved_tokens,
            "tokens": round(float(tokens), 2),
        }


class UnlimitedRateLimiter:
    """No rate limit: the setting is 0, or there is no Redis to share a budget through."""

    def acquire(self, *, priority: Priority, timeout: float) -> bool:
        """Always grant at once."""
        return True

    def state(self) -> dict:
        """The (absent) limit as operators see it."""
        return {"enabled": False}


def get_rate_limiter() -> RedisRateLimiter | UnlimitedRateLimiter:
    """The rate limiter for the current settings."""
    per_second = settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND
    if per_second <= 0 or not _uses_redis():
        return UnlimitedRateLimiter()
    return RedisRateLimiter(
        per_second=per_second,
        burst=settings.ENTITLEMENTS_RATE_LIMIT_BURST,
        interactive_reserve=settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE,
    )


# --- The door the engine uses -----------------------------------------------------------------


@contextmanager
def guarded_upstream_call(
    *,
    priority: Priority,
    transient: tuple[type[BaseException], ...],
    max_wait: float | None = None,
) -> Iterator[None]:
    """Admit one upstream request through the breaker and the rate limit, record its outcome.

    Raises CircuitOpenError at once while the circuit is open, RateLimitTimeoutError when no
    token came within `max_wait` seconds (default: 10 s interactive, 30 s bulk). An exception
    of a `transient` type counts as a failure; a normal exit or any other exception counts as
    an answer (a 401 or a malformed body is not an outage).
    """
    wait = _MAX_WAIT_SECONDS[priority] if max_wait is None else max_wait
    breaker = get_circuit_breaker()
    try:
        admission = breaker.allow()
    except RedisError:
        admission = None
    if admission is None:
        logger.warning("entitlements circuit breaker unreachable in Redis; calling anyway")
        yield
        return
    if not admission:
        raise CircuitOpenError(admission.retry_after)
    if not _acquire_token(priority, wait):
        _give_back(breaker, admission)
        raise RateLimitTimeoutError(wait)
    try:
        yield
    except transient:
        _record(breaker.record_failure)
        raise
    except Exception:
        _record(breaker.record_success)
        raise
    except BaseException:
        # Interrupted (worker shutdown): no outcome, but let someone else probe.
        _give_back(breaker, admission)
        raise
    _record(breaker.record_success)


def _acquire_token(priority: Priority, wait: float) -> bool:
    try:
        return get_rate_limiter().acquire(priority=priority, timeout=wait)
    except RedisError:
        logger.warning("entitlements rate limit unreachable in Redis; calling anyway")
        return True


def _give_back(breaker: RedisCircuitBreaker | ProcessCircuitBreaker, admission: Admission) -> None:
    try:
        breaker.release(admission)
    except RedisError:
        logger.warning("entitlements circuit breaker unreachable in Redis; probe left to expire")


def _record(outcome) -> None:
    try:
        outcome()
    except RedisError:
        logger.warning("entitlements circuit breaker unreachable in Redis; outcome not recorded")


def upstream_guard_state() -> dict:
    """The breaker and the rate limit as operators see them, for an admin page or task result."""
    try:
        return {
            "circuit": get_circuit_breaker().state(),
            "rate_limit": get_rate_limiter().state(),
        }
    except RedisError:
        # An admin page must still render while Redis is down; the guard lets calls through.
        return {
            "circuit": {"state": "unknown"},
            "rate_limit": {"state": "unknown"},
            "error": "redis_unreachable",
        }
