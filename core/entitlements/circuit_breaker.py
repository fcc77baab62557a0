"""The circuit breaker toward the entitlements service, shared by every worker through Redis.

Its transitions run as Lua scripts: atomic, and timed by the Redis clock so that machines with
skewed clocks agree. Closed: calls go. After `ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD` transient
failures in a row within the window it opens and refuses calls for the cool-down, then admits
a single probe (half-open): its answer closes the circuit, its failure re-opens it.
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from django.conf import settings
from redis.commands.core import Script

from core import metrics
from core.entitlements._upstream import redis_connection, redis_key, seconds_to_ms

logger = logging.getLogger(__name__)

# An abandoned open circuit (no caller for a day) may expire: the next failures re-open it.
_OPEN_STATE_RETENTION_MS = 24 * 3600 * 1000


class CircuitState(StrEnum):
    """The three states of the circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Admission:
    """The breaker's answer to one caller; true when the call may go."""

    allowed: bool
    # Set when this caller won the single half-open probe; give it back with `release`.
    probe_token: str | None = None
    retry_after: float = 0.0
    # Whether a run of failures was counted when the call was admitted.
    failures_counted: bool = True

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def success_changes_something(self) -> bool:
        """Whether the call's success must be reported: it closes a half-open circuit (the
        probe's) or ends a run of failures. A closed circuit with no failure counted stays as
        it is, so a healthy upstream's calls spend no round trip on their outcome."""
        return self.probe_token is not None or self.failures_counted


# This module's scripts are registered with no client (None, which redis-py's hints do not
# allow): each call passes the client it runs on.

# KEYS: state hash, failures sorted set, probe key. Time is the Redis clock in milliseconds.
_REDIS_TIME_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The breaker's admission as Lua functions: `_ALLOW` runs them alone, the upstream guard's
# admission inside its one script with the rate limit's slot and the batch user's lock.
BREAKER_ADMISSION_LUA = """
-- The circuit at `now` (ms): 'closed' and 1 if a run of failures is counted (else 0); 'probe'
-- when half-open and nobody probes (claim it with claim_probe); 'open' and the ms to wait.
local function breaker_admission(state_key, failures_key, probe_key, now)
  local reopens_at = tonumber(redis.call('HGET', state_key, 'reopens_at'))
  if not reopens_at then return 'closed', redis.call('EXISTS', failures_key) end
  if now < reopens_at then return 'open', reopens_at - now end
  local probe_expires_in = redis.call('PTTL', probe_key)
  if probe_expires_in == -2 then return 'probe', 0 end
  return 'open', probe_expires_in
end
-- The single probe: its key lives the cool-down, so a probe that hangs is retried after it.
local function claim_probe(probe_key, token, ttl_ms)
  redis.call('SET', probe_key, token, 'PX', ttl_ms)
end
"""

# ARGV: probe token, probe ttl ms. Returns {verdict, ms until reopening or probe expiry if
# open, else 1 if a run of failures is counted}.
_ALLOW = Script(
    None,  # type: ignore[arg-type]
    (
        _REDIS_TIME_MS
        + BREAKER_ADMISSION_LUA
        + """
local verdict, number = breaker_admission(KEYS[1], KEYS[2], KEYS[3], now)
if verdict == 'probe' then claim_probe(KEYS[3], ARGV[1], ARGV[2]) end
return {verdict, number}
"""
    ).encode(),
)

# ARGV: threshold, window ms, cool-down ms, failure id, retention ms.
# Returns {transition, failures in a row, reopens_at ms}.
_RECORD_FAILURE = Script(
    None,  # type: ignore[arg-type]
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
    None,  # type: ignore[arg-type]
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
    None,  # type: ignore[arg-type]
    b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)

# Returns {reopens_at ms or -1, failures in a row, reopenings, now ms, probe held 0/1}.
_CIRCUIT_STATE = Script(
    None,  # type: ignore[arg-type]
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
    metrics.circuit_transition(transition=transition)
    # Operators follow the circuit in the worker logs; nothing here names a user. Only one
    # caller sees "opened" (the transition is atomic in Redis): an ERROR, so Sentry gets one
    # event per outage; the re-openings while it lasts stay warnings.
    if transition == "opened":
        logger.error(
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


def admission_from_reply(verdict: bytes, number: int, *, probe_token: str) -> Admission:
    """The Admission that breaker_admission's reply (BREAKER_ADMISSION_LUA) stands for, the
    probe claimed with `probe_token` when the verdict is 'probe'."""
    if verdict == b"closed":
        return Admission(allowed=True, failures_counted=bool(number))
    if verdict == b"probe":
        return Admission(allowed=True, probe_token=probe_token)
    return Admission(allowed=False, retry_after=max(0, number) / 1000)


class CircuitBreaker:
    """The circuit breaker shared by every process through Redis; raises RedisError if down."""

    def __init__(self) -> None:
        # State hash, failures sorted set, probe key: BREAKER_ADMISSION_LUA's keys too.
        self.keys = [
            redis_key("circuit"),
            redis_key("circuit:failures"),
            redis_key("circuit:probe"),
        ]

    def allow(self) -> Admission:
        """Admit a call when closed, or as the single probe once the cool-down is over."""
        token, probe_ttl_ms = self.probe_arguments()
        verdict, number = _ALLOW(self.keys, [token, probe_ttl_ms], client=redis_connection())
        return admission_from_reply(verdict, number, probe_token=token)

    @staticmethod
    def probe_arguments() -> tuple[str, int]:
        """claim_probe's token (new for each admission) and the probe's lifetime in ms."""
        _threshold, _window, cooldown = _circuit_settings()
        return uuid.uuid4().hex, seconds_to_ms(cooldown)

    def release(self, admission: Admission) -> None:
        """Give back an unused probe so another caller can probe at once."""
        if admission.probe_token:
            _RELEASE_PROBE([self.keys[2]], [admission.probe_token], client=redis_connection())

    def record_success(self) -> None:
        """Report that the upstream answered: ends a run of failures, closes a half-open circuit."""
        if _RECORD_SUCCESS(self.keys, client=redis_connection()) == b"closed":
            _log_transition("closed", failures=0, reopens_in=0)

    def record_failure(self) -> None:
        """Report a transient upstream failure (5xx, 429, timeout, connection refused)."""
        threshold, window, cooldown = _circuit_settings()
        transition, failures, _reopens_at = _RECORD_FAILURE(
            self.keys,
            [
                threshold,
                seconds_to_ms(window),
                seconds_to_ms(cooldown),
                uuid.uuid4().hex,
                _OPEN_STATE_RETENTION_MS,
            ],
            client=redis_connection(),
        )
        _log_transition(transition.decode(), failures=failures, reopens_in=cooldown)

    def state(self) -> dict:
        """The circuit as operators see it (JSON-able)."""
        threshold, window, _cooldown = _circuit_settings()
        reopens_at, failures, reopenings, now, probing = _CIRCUIT_STATE(
            self.keys, [seconds_to_ms(window)], client=redis_connection()
        )
        if reopens_at < 0:
            state = CircuitState.CLOSED
        elif now < reopens_at:
            state = CircuitState.OPEN
        else:
            state = CircuitState.HALF_OPEN
        is_open = state != CircuitState.CLOSED
        return {
            "state": str(state),
            "failures": failures,
            "failure_threshold": threshold,
            "reopens_at": datetime.fromtimestamp(reopens_at / 1000, tz=UTC).isoformat()
            if is_open
            else None,
            "reopens_in": max(0.0, (reopens_at - now) / 1000) if is_open else None,
            "reopenings": reopenings,
            "probe_in_flight": bool(probing),
        }
