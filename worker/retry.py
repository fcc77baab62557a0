"""The one retry policy of entitlements syncs: bounded exponential backoff with full jitter."""

import secrets

from django.conf import settings

_random = secrets.SystemRandom()


def retry_countdown(*, retries: int) -> float:
    """Seconds to wait before the next attempt, after `retries` retries already made.

    Full jitter (a uniform draw between zero and the exponential ceiling) spreads the retries
    of many users failing together, so a recovering upstream is not hit by synchronised waves.
    The cap keeps every countdown far below the broker's visibility timeout (checked at
    start-up in settings), or Redis would deliver the waiting message a second time.
    """
    ceiling = min(
        settings.ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS,
        settings.ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS * 2 ** max(retries, 0),
    )
    return _random.uniform(0, ceiling)


def may_retry(*, retries: int) -> bool:
    """Whether an attempt that already retried `retries` times may retry once more."""
    return retries < settings.ENTITLEMENTS_SYNC_MAX_RETRIES
