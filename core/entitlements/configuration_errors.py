"""What fails for every user at once, told loudly but once: a wrong configuration (the upstream
refuses our key, service id or URL), an upstream answering what the contract does not allow.

Every user's sync fails the same way while it lasts: one ERROR line (which Sentry's logging
integration turns into one event) says what to check, instead of one per user; each sync
logs a warning. A run reports once; login and manual syncs report once per episode, a window
shared through the cache (Redis in production) by every worker.
"""

import logging

from django.core.cache import cache

logger = logging.getLogger(__name__)

# While the configuration stays wrong, per-user syncs report it at most once in this window.
EPISODE_SECONDS = 3600
_EPISODE_KEY = "entitlements:configuration-error:reported"
_INVALID_EPISODE_KEY = "entitlements:invalid-answer:reported"
_INVALID_RUN_KEY = "entitlements:invalid-answer:run"
# A run's report is kept longer than any run lasts.
RUN_SECONDS = 24 * 3600


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


def report_invalid_answer(*, user_id, error_code: str, run_id: int | None) -> None:
    """Log an invalid upstream answer as an ERROR once per run (a run's syncs) or once per
    episode (other syncs): a malformed answer is usually every user's."""
    if run_id is not None:
        first = _open_episode(error_code, key=f"{_INVALID_RUN_KEY}:{run_id}", seconds=RUN_SECONDS)
        scope = f"resync run {run_id}"
        told = "once per run"
    else:
        first = _open_episode(error_code, key=_INVALID_EPISODE_KEY)
        scope = "entitlements sync"
        told = f"once per {EPISODE_SECONDS} s while it lasts"
    if first:
        logger.error(
            "%s: the entitlements service answered what its contract does not allow (%s), "
            "first for user %s: no access changed (reported %s; each sync logs a warning)",
            scope,
            error_code,
            str(user_id),
            told,
        )


def _open_episode(error_code: str, *, key: str = _EPISODE_KEY, seconds: int = EPISODE_SECONDS):
    """Start the reporting window unless one is open; True when this call started it."""
    try:
        return cache.add(key, error_code, timeout=seconds)
    except Exception:
        # Without the shared cache, an error reported twice beats one never reported.
        logger.warning("cache unreachable: reporting window %s not recorded", key)
        return True
