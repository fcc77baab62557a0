"""The one retry policy of entitlements syncs: bounded exponential backoff with full jitter."""

import secrets

from django.conf import settings

from core.entitlements import upstream_status

_random = secrets.SystemRandom()


def retry_countdown(*, retries: int, circuit_reopens_in: float = 0.0) -> float:
    """Seconds to wait before the next attempt, after `retries` retries already made.

    Full jitter (a uniform draw between zero and the exponential ceiling) spreads the retries
    of many users failing together, so a recovering upstream is not hit by synchronised waves.
    While the upstream's circuit is open, the draw starts once it reopens (`circuit_reopens_in`
    seconds from now): a retry inside the cool-down would be refused without asking, and spend
    one of the few retries on nothing. Both parts are capped by
    ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS, which keeps every countdown (at most twice that)
    below the broker's visibility timeout (checked at start-up in settings: max delay plus the
    task time limit under half of it), or Redis would deliver the waiting message a second time.
    """
    cap = settings.ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS
    ceiling = min(cap, settings.ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS * 2 ** max(retries, 0))
    return min(max(circuit_reopens_in, 0.0), cap) + _random.uniform(0, ceiling)


def circuit_reopens_in() -> float:
    """Seconds the shared circuit breaker still refuses calls: 0 when it is closed or half-open
    (the next call may probe), and when there is no breaker or Redis cannot tell. Read on the
    retry path only (the guard's state, as the admin shows it), never on a sync's own path."""
    return upstream_status()["circuit"].get("reopens_in") or 0.0


def may_retry(*, retries: int) -> bool:
    """Whether an attempt that already retried `retries` times may retry once more."""
    return retries < settings.ENTITLEMENTS_SYNC_MAX_RETRIES
