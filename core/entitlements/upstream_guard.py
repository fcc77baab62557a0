"""The guard around one call to the entitlements service: circuit breaker, then rate limit.

The engine asks the upstream inside `admit_upstream_call` and tells the call how the upstream
did. The breaker (`circuit_breaker.py`) and the paced schedule (`rate_limit.py`) are shared
through Redis by every worker process on every machine, their keys namespaced with the cache's
KEY_PREFIX.

Without a Redis cache (the default cache is not django_redis) calls go through with neither
breaker nor rate limit, and the guard says so once per process in the log (WARNING): there is
no shared store that could bound the fleet's calls. The embedded default does not reach this:
its local backend is not guarded (`guard_upstream_calls = False`).

If Redis itself fails, the guard lets the call through and logs a warning: protecting the
upstream is not worth refusing every sync while the shared store is down.

A batch's call is admitted together with its user's lock (`admit_upstream_call(lock=...)`):
the breaker's admission, the rate limit's slot and the lock in one Lua script, one round trip
per user where they were three. Each piece is the Lua its own module runs alone
(`BREAKER_ADMISSION_LUA`, `TAKE_SLOT_LUA`, `TAKE_LOCK_LUA`), so each rule is written once.
"""

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis.commands.core import Script
from redis.exceptions import RedisError

from core import metrics
from core.entitlements._upstream import Priority, redis_connection, uses_redis
from core.entitlements.circuit_breaker import (
    BREAKER_ADMISSION_LUA,
    Admission,
    CircuitBreaker,
    admission_from_reply,
)
from core.entitlements.rate_limit import (
    TAKE_SLOT_LUA,
    SlotReply,
    get_rate_limiter,
    schedule_key,
    slot_reply,
)
from core.locks import TAKE_LOCK_LUA, LockHeld, TTLLock

__all__ = ("Priority", "UpstreamCall", "admit_upstream_call", "upstream_status")

logger = logging.getLogger(__name__)

# How long a caller may sleep for its slot before giving up. Bulk syncs wait longer: sleeping
# until its booked slot in the worker is what paces a full run. A login sync that found no slot
# in 10 s (the fleet is saturated by logins alone) is better retried than left holding an
# interactive worker.
_MAX_WAIT_SECONDS = {Priority.INTERACTIVE: 10.0, Priority.BULK: 30.0}

# The admission of a call together with its user's lock. It changes nothing unless all three
# pieces say yes: a held lock takes no slot and no probe, an open circuit no slot and no lock,
# a slot not there yet no probe and no lock (the caller sleeps as the schedule says and asks
# again, the lock free meanwhile for another sync of the user).
# KEYS: the lock; the breaker's state, failures and probe keys; the rate schedule.
# ARGV: the lock's token, 1 if it takes back its owner's lock, ttl (ms); the probe's token and
# ttl (ms); then take_slot's five arguments, none when the rate limit is off.
# Returns {outcome, number, 1 if a run of failures is counted}: 'lock_held'; 'open' and the ms
# to wait; 'wait' and the us before asking again; admitted, the lock taken: 'closed' or
# 'probe' (the probe claimed) and the us to sleep until the booked slot.
_ADMIT_TAKING_LOCK = Script(
    None,  # type: ignore[arg-type]
    (
        TAKE_LOCK_LUA
        + BREAKER_ADMISSION_LUA
        + TAKE_SLOT_LUA
        + """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
if not lock_is_free(KEYS[1], ARGV[1], ARGV[2] == '1') then return {'lock_held', 0, 0} end
local verdict, number = breaker_admission(KEYS[2], KEYS[3], KEYS[4], math.floor(now_us / 1000))
if verdict == 'open' then return {'open', number, 0} end
local sleep = '0'
if #ARGV > 5 then
  local granted
  granted, sleep = take_slot(KEYS[5], now_us, unpack(ARGV, 6))
  if granted == 0 then return {'wait', sleep, 0} end
end
if verdict == 'probe' then claim_probe(KEYS[4], ARGV[4], ARGV[5]) end
take_lock(KEYS[1], ARGV[1], ARGV[3])
return {verdict, sleep, number}
"""
    ).encode(),
)


@dataclass
class UpstreamCall:
    """One call the guard let go or refused; told how the upstream did, it tells the breaker."""

    # Why the guard did not let the call go ("circuit_open", "rate_limited"); empty if it may.
    refused: str = ""
    # None when there is no shared breaker to tell (no Redis cache, or Redis unreachable).
    breaker: CircuitBreaker | None = None
    admission: Admission | None = None
    recorded: bool = False

    def record(self, *, available: bool) -> None:
        """Tell the breaker the upstream answered, or was unavailable (5xx, 429, timeout)."""
        self.recorded = True
        if self.breaker is None or self.admission is None:
            return
        if available and not self.admission.success_changes_something:
            # A closed circuit with no failure counted: the success would change nothing, and
            # skipping it spares a healthy run's every call a round trip.
            return
        tell = self.breaker.record_success if available else self.breaker.record_failure
        try:
            tell()
        except RedisError:
            logger.warning(
                "entitlements circuit breaker unreachable in Redis; the call is not counted"
            )


@contextmanager
def admit_upstream_call(
    *, priority: Priority, lock: TTLLock | None = None
) -> Iterator[UpstreamCall]:
    """Admit one upstream request through the breaker and the rate limit, or refuse it.

    A refused call (`refused` set) must not be made: the circuit is open, or no rate-limit slot
    came within the priority's wait (10 s interactive, 30 s bulk). An admitted call is
    made and then told with `record` how the upstream did; one left untold (the worker shut down
    mid-call) gives its half-open probe back, so that someone else may probe at once.

    `lock` (a batch user's, not taken yet) is held once the call is admitted or refused: a
    refused sync still serves the stale answer under it. It is taken in the admission's round
    trip, or alone after a refusal. LockHeld, with no slot taken and the breaker untouched, if
    another sync of the user holds it.
    """
    if not uses_redis():
        _warn_unguarded()
        if lock is not None:
            lock.acquire_or_raise()
        yield UpstreamCall()
        return
    wait = _MAX_WAIT_SECONDS[priority]
    call = _admit(priority, wait) if lock is None else _admit_taking_lock(priority, wait, lock)
    if call.refused:
        metrics.upstream_refused(reason=call.refused)
    try:
        yield call
    finally:
        if call.breaker is not None and call.admission is not None and not call.recorded:
            _give_back(call.breaker, call.admission)


def _admit(priority: Priority, wait: float) -> UpstreamCall:
    breaker = CircuitBreaker()
    try:
        admission = breaker.allow()
    except RedisError:
        logger.warning("entitlements circuit breaker unreachable in Redis; calling anyway")
        return UpstreamCall()
    if not admission:
        return UpstreamCall(refused="circuit_open")
    if not _acquire_token(priority, wait):
        _give_back(breaker, admission)
        return UpstreamCall(refused="rate_limited")
    return UpstreamCall(breaker=breaker, admission=admission)


class _CircuitOpen(Exception):
    """Ends the wait for a slot: the circuit is open, the call is refused."""


def _admit_taking_lock(priority: Priority, wait: float, lock: TTLLock) -> UpstreamCall:
    """_admit, the lock taken in the same script: one round trip per ask of the schedule (one,
    unless the run has booked every slot it may), then the lock alone if the call is refused."""
    breaker = CircuitBreaker()
    lock_key, lock_arguments = lock.redis_take_arguments()
    keys = [lock_key, *breaker.keys, schedule_key()]
    admission = Admission(allowed=False)

    def ask(slot_arguments: list) -> SlotReply:
        nonlocal admission
        probe_token, probe_ttl_ms = breaker.probe_arguments()
        outcome, number, failures_counted = _ADMIT_TAKING_LOCK(
            keys,
            [*lock_arguments, probe_token, probe_ttl_ms, *slot_arguments],
            client=redis_connection(),
        )
        if outcome == b"lock_held":
            raise LockHeld(lock.key)
        if outcome == b"open":
            raise _CircuitOpen
        if outcome == b"wait":
            return slot_reply(0, number)
        lock.taken_in_redis()
        admission = admission_from_reply(outcome, failures_counted, probe_token=probe_token)
        return slot_reply(1, number)

    try:
        admitted = get_rate_limiter().wait_for_slot(priority=priority, timeout=wait, take=ask)
    except _CircuitOpen:
        lock.acquire_or_raise()
        return UpstreamCall(refused="circuit_open")
    except RedisError:
        logger.warning("entitlements upstream guard unreachable in Redis; calling anyway")
        lock.acquire_or_raise()
        return UpstreamCall()
    if not admitted:
        lock.acquire_or_raise()
        return UpstreamCall(refused="rate_limited")
    return UpstreamCall(breaker=breaker, admission=admission)


# Cached: once per process is enough to tell the operator, every call would flood the log.
@functools.cache
def _warn_unguarded() -> None:
    logger.warning(
        "entitlements upstream calls are not guarded: the default cache is not Redis "
        "(django_redis), so there is no circuit breaker and no rate limit"
    )


def _acquire_token(priority: Priority, wait: float) -> bool:
    try:
        return get_rate_limiter().acquire(priority=priority, timeout=wait)
    except RedisError:
        logger.warning("entitlements rate limit unreachable in Redis; calling anyway")
        return True


def _give_back(breaker: CircuitBreaker, admission: Admission) -> None:
    try:
        breaker.release(admission)
    except RedisError:
        logger.warning("entitlements circuit breaker unreachable in Redis; probe left to expire")


def upstream_status() -> dict:
    """The breaker and the rate limit as operators see them (JSON-able), for the admin."""
    if not uses_redis():
        return {
            "circuit": {"state": "off"},
            "rate_limit": {"enabled": False},
            "error": "no_redis_cache",
        }
    try:
        return {"circuit": CircuitBreaker().state(), "rate_limit": get_rate_limiter().state()}
    except RedisError:
        # The admin page must still render while Redis is down; the guard lets calls through.
        return {
            "circuit": {"state": "unknown"},
            "rate_limit": {"state": "unknown"},
            "error": "redis_unreachable",
        }
