"""The guard around one call to the entitlements service: circuit breaker, then rate limit.

The engine wraps each upstream request in `guarded_upstream_call`. The breaker
(`circuit_breaker.py`) and the token bucket (`rate_limit.py`) are shared through Redis by every
worker process on every machine, their keys namespaced with the cache's KEY_PREFIX.

Without a Redis cache (the default cache is not django_redis) calls go through with neither
breaker nor rate limit, and the guard says so once per process in the log (WARNING): there is
no shared store that could bound the fleet's calls. The embedded default does not reach this:
its local backend is not guarded (`guard_upstream_calls = False`).

If Redis itself fails, the guard lets the call through and logs a warning: protecting the
upstream is not worth refusing every sync while the shared store is down.
"""

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from core.entitlements._upstream import Priority, UpstreamGuardError, uses_redis
from core.entitlements.circuit_breaker import Admission, CircuitBreaker, CircuitOpenError
from core.entitlements.rate_limit import RateLimitTimeoutError, get_rate_limiter

__all__ = ("Priority", "UpstreamGuardError", "guarded_upstream_call", "upstream_status")

logger = logging.getLogger(__name__)

# How long a caller may sleep for a token before giving up. Bulk syncs wait longer: waiting in
# the worker is what paces a full run. A login sync that found no token in 10 s (the fleet is
# saturated by logins alone) is better retried than left holding an interactive worker.
_MAX_WAIT_SECONDS = {Priority.INTERACTIVE: 10.0, Priority.BULK: 30.0}


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
    if not uses_redis():
        _warn_unguarded()
        yield
        return
    wait = _MAX_WAIT_SECONDS[priority] if max_wait is None else max_wait
    breaker = CircuitBreaker()
    try:
        admission = breaker.allow()
    except RedisError:
        admission = None
    if admission is None:
        # Outside the except clause: the call's own errors must not chain to the Redis one.
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


def _record(outcome: Callable[[], None]) -> None:
    try:
        outcome()
    except RedisError:
        logger.warning("entitlements circuit breaker unreachable in Redis; outcome not recorded")


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
