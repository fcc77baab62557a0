"""One user's sync inside a task: the per-user lock around the engine, and outcome counting."""

import enum
import logging
from dataclasses import dataclass

from core.entitlements import (
    EntitlementsUnavailableError,
    FetchedAnswer,
    Priority,
    RevocationGuard,
    SyncResult,
    fetch_user_answer,
    sync_user_entitlements,
)
from core.models import EntitlementSyncState, User
from worker.locks import TTLLock

logger = logging.getLogger(__name__)

# Hard time limit of entitlements.sync_user: one upstream call with its own timeouts and
# retries inside, plus one short transaction.
SYNC_USER_TIME_LIMIT = 60
# Longer than any one user's sync (the task is killed at its hard limit, a batch thread's
# user takes far less), so a live sync never loses its lock; a killed one frees it by expiry.
USER_LOCK_TTL = SYNC_USER_TIME_LIMIT + 30

_FAILED_STATUSES = frozenset(
    status.value
    for status in (
        EntitlementSyncState.Status.INVALID,
        EntitlementSyncState.Status.ERROR,
        EntitlementSyncState.Status.UNAVAILABLE,
    )
)


class Outcome(enum.StrEnum):
    """How one user's sync inside a batch ended, as the run's counters count it."""

    DONE = "done"
    CHANGED = "changed"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNAVAILABLE = "unavailable"


def user_lock(user_id, *, owner: str = "") -> TTLLock:
    """The lock that keeps two syncs of one user from running at once.

    `owner` is the task id: a redelivered task takes back the lock its killed run left.
    """
    return TTLLock(f"sync-user:{user_id}", ttl=USER_LOCK_TTL, owner=owner)


def sync_under_lock(
    *,
    user_id,
    trigger: str,
    task_id: str,
    priority: Priority = Priority.INTERACTIVE,
    revocation_guard: RevocationGuard | None = None,
) -> SyncResult | None:
    """Run the engine's sync of the user while holding their lock; None if the lock is held.

    Raises what the engine raises, EntitlementsUnavailableError included, lock released.
    """
    lock = user_lock(user_id, owner=task_id)
    if not lock.acquire():
        return None
    try:
        return sync_user_entitlements(
            user_id=user_id,
            trigger=trigger,
            task_id=task_id,
            priority=priority,
            revocation_guard=revocation_guard,
        )
    finally:
        lock.release()


def running_sync_serves_request(*, user_id) -> bool:
    """Whether a sync of the user is running that started after their latest request.

    Such a sync reads the upstream after the request was made, so it honours it: a second
    task for the same request can stop. A sync that started before the request cannot.
    """
    state = (
        EntitlementSyncState.objects.filter(user_id=user_id)
        .values("requested_at", "started_at", "finished_at")
        .first()
    )
    if not state or not state["started_at"] or not state["requested_at"]:
        return False
    running = state["finished_at"] is None or state["finished_at"] < state["started_at"]
    return running and state["started_at"] >= state["requested_at"]


@dataclass(slots=True)
class FetchedUser:
    """One user of a batch after the fetch: their answer (held under their lock), the upstream
    error to retry, or already an outcome (lock held elsewhere, failure)."""

    user: User
    lock: TTLLock | None = None
    answer: FetchedAnswer | None = None
    unavailable: EntitlementsUnavailableError | None = None
    outcome: Outcome | None = None

    def release(self) -> None:
        """Free the user's lock, once their sync is recorded."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def fetch_under_lock(*, user: User, task_id: str) -> FetchedUser:
    """Take the user's lock and fetch their answer for a batch; the lock stays held.

    The batch's task id owns the lock, so a redelivered batch takes back what its killed run
    left. Never raises for one user: a batch goes on whatever happens to one of its users.
    """
    lock = user_lock(user.pk, owner=task_id)
    if not lock.acquire():
        # Another sync of this user is running now: it is at least as fresh as this run.
        return FetchedUser(user=user, outcome=Outcome.SKIPPED)
    try:
        # Bulk priority: a full run leaves the rate limit's reserve to login syncs.
        answer = fetch_user_answer(user=user, priority=Priority.BULK)
    except EntitlementsUnavailableError as error:
        return FetchedUser(user=user, lock=lock, unavailable=error)
    except Exception:
        lock.release()
        # Logged with its traceback (Sentry gets it), without the user's email or claims.
        logger.exception("sync of user %s failed while fetching", user.pk)
        return FetchedUser(user=user, outcome=Outcome.FAILED)
    return FetchedUser(user=user, lock=lock, answer=answer)


def outcome_of(result: SyncResult) -> Outcome:
    """How a finished sync counts in its run."""
    if result.status in _FAILED_STATUSES:
        return Outcome.FAILED
    return Outcome.CHANGED if result.changed else Outcome.DONE
