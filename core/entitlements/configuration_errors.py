"""A wrong configuration (the upstream refuses our key, service id or URL), told loudly but once.

Every user's sync fails the same way while the settings are wrong: one ERROR line (which
Sentry's logging integration turns into one event) says what to check, instead of one per
user. A run reports its own stop once; login and manual syncs report once per episode, a
window shared through the cache (Redis in production) by every worker.
"""

import logging

from django.core.cache import cache

logger = logging.getLogger(__name__)

# While the configuration stays wrong, per-user syncs report it at most once in this window.
EPISODE_SECONDS = 3600
_EPISODE_KEY = "entitlements:configuration-error:reported"


def what_to_check(error_code: str) -> str:
    """The operator's next step for a configuration error (an HTTP status, never a value)."""
    return (
        f"the entitlements service refused our request ({error_code}): check "
        "ENTITLEMENTS_BACKEND_PARAMETERS: api_key and service_id (HTTP 401/403), "
        "base_url (any other status)"
    )


def report_run_stopped(*, run_id: int, error_code: str) -> None:
    """Log the one ERROR of a run stopped by a configuration error; opens an episode too."""
    logger.error("resync run %s stopped: %s", run_id, what_to_check(error_code))
    _open_episode(error_code)


def report_configuration_error(*, error_code: str) -> None:
    """Log a per-user sync's configuration error as an ERROR once per episode."""
    if _open_episode(error_code):
        logger.error(
            "entitlements sync: %s (reported once per %d s while it lasts; each sync logs a "
            "warning)",
            what_to_check(error_code),
            EPISODE_SECONDS,
        )


def _open_episode(error_code: str) -> bool:
    """Start the reporting window unless one is open; True when this call started it."""
    try:
        return cache.add(_EPISODE_KEY, error_code, timeout=EPISODE_SECONDS)
    except Exception:
        # Without the shared cache, an error reported twice beats one never reported.
        logger.warning("cache unreachable: configuration error episode not recorded")
        return True
