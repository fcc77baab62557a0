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
"""

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis.exceptions import RedisError

from core import metrics
from core.entitlements._upstream import Priority, uses_redis
from core.entitlements.circuit_breaker import Admission, CircuitBreaker
from core.entitlements.rate_limit import get_rate_limiter

__all__ = ("Priority", "UpstreamCall", "admit_upstream_call", "upstream_status")

logger = logging.getLogger(__name__)

# How long a caller may sleep for its slot before giving up. Bulk syncs wait longer: sleeping
# until its booked slot in the worker is what paces a full run. A login sync that found no slot
# in 10 s (the fleet is saturated by logins alone) is better retried than left holding an
# interactive worker.
_MAX_WAIT_SECONDS = {Priority.INTERACTIVE: 10.0, Priority.BULK: 30.0}


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
        if self.breaker is None:
            return
        tell = self.breaker.record_success if available else self.breaker.record_failure
        try:
            tell()
        except RedisError:
            logger.warning(
                "entitlements circuit breaker unreachable in Redis; the call is not counted"
            )


@contextmanager
def admit_upstream_call(*, priority: Priority) -> Iterator[UpstreamCall]:
    """Admit one upstream request through the breaker and the rate limit, or refuse it.

    A refused call (`refused` set) must not be made: the circuit is open, or no rate-limit slot
    came within the priority's wait (10 s interactive, 30 s bulk). An admitted call is
    made and then told with `record` how the upstream did; one left untold (the worker shut down
    mid-call) gives its half-open probe back, so that someone else may probe at once.
    """
    if not uses_redis():
        _warn_unguarded()
        yield UpstreamCall()
        return
    call = _admit(priority, _MAX_WAIT_SECONDS[priority])
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
