"""Celery tasks of the entitlements sync: thin wrappers adding locks, retries and counting.

Arguments are ids and a trigger name, results are small JSON dicts: no email, claim or
token ever reaches the broker, the result backend or Flower.
"""

import logging

from celery import shared_task

from core.entitlements import EntitlementsUnavailableError, RunRevocationGuard
from core.models import MailDomain, SyncRun, User
from core.sync_requests import (
    enqueue_outstanding_requests,
    users_due_for_full_resync,
    users_of_domain,
)
from worker.queues import (
    SWEEP_PENDING_SYNCS_TASK,
    SYNC_ALL_ADMINS_TASK,
    SYNC_DOMAIN_ADMINS_TASK,
    SYNC_USER_TASK,
    SYNC_USERS_BATCH_TASK,
)
from worker.retry import may_retry, retry_countdown
from worker.runs import record_batch, run_resync, sync_batch
from worker.user_sync import (
    SYNC_USER_TIME_LIMIT,
    running_sync_serves_request,
    sync_under_lock,
)

logger = logging.getLogger(__name__)


# max_retries=None: the bound is ENTITLEMENTS_SYNC_MAX_RETRIES, applied by worker.retry.
@shared_task(
    bind=True,
    name=SYNC_USER_TASK,
    max_retries=None,
    time_limit=SYNC_USER_TIME_LIMIT,
    soft_time_limit=SYNC_USER_TIME_LIMIT - 5,
)
def sync_user(self, user_id: str, trigger: str) -> dict:
    """Sync one user's admin accesses; retry while the upstream is down or another sync runs."""
    retries = self.request.retries
    try:
        result = sync_under_lock(user_id=user_id, trigger=trigger, task_id=self.request.id or "")
    except EntitlementsUnavailableError as error:
        # The engine recorded the failure and left every access as it was.
        if may_retry(retries=retries):
            raise self.retry(countdown=retry_countdown(retries=retries)) from error
        logger.warning("sync of user %s (%s): retries exhausted", user_id, trigger)
        return _not_synced(user_id, trigger, status="unavailable", reason=error.error_code)
    except User.DoesNotExist:
        return _not_synced(user_id, trigger, status="skipped", reason="unknown_user")
    if result is not None:
        return result.as_dict()
    # Another sync of this user holds the lock.
    if running_sync_serves_request(user_id=user_id):
        return _not_synced(user_id, trigger, status="skipped", reason="served_by_running_sync")
    if may_retry(retries=retries):
        raise self.retry(countdown=retry_countdown(retries=retries))
    # Still recorded as requested and unserved: the sweep sends it again later.
    return _not_synced(user_id, trigger, status="skipped", reason="locked")


@shared_task(bind=True, name=SYNC_ALL_ADMINS_TASK)
def sync_all_admins(self, trigger: str = "periodic") -> dict:
    """Resync every user the periodic run covers, in batches on the bulk queue."""
    return run_resync(
        scope=SyncRun.Scope.ALL,
        scope_key="all",
        trigger=trigger,
        task_id=self.request.id or "",
        user_ids=users_due_for_full_resync(),
        on_progress=_progress_reporter(self),
    )


@shared_task(bind=True, name=SYNC_DOMAIN_ADMINS_TASK)
def sync_domain_admins(self, maildomain_id: str, trigger: str = "admin") -> dict:
    """Resync the admins of one mail domain and those last told they may administer it."""
    maildomain = MailDomain.objects.filter(pk=maildomain_id).first()
    if maildomain is None:
        return {"status": "skipped", "reason": "unknown_domain"}
    return run_resync(
        scope=SyncRun.Scope.DOMAIN,
        scope_key=f"domain:{maildomain.pk}",
        maildomain_name=maildomain.name,
        trigger=trigger,
        task_id=self.request.id or "",
        user_ids=users_of_domain(maildomain=maildomain),
        on_progress=_progress_reporter(self),
    )


@shared_task(bind=True, name=SYNC_USERS_BATCH_TASK, max_retries=None)
def sync_users_batch(self, user_ids: list[str], run_id: int, trigger: str) -> dict:
    """Sync a batch of a run's users concurrently; retry those whose upstream was down."""
    retries = self.request.retries
    outcome = sync_batch(
        user_ids=user_ids,
        trigger=trigger,
        task_id=self.request.id or "",
        # The run's budget: beyond it, the batch holds revocations instead of applying them.
        revocation_guard=RunRevocationGuard(run_id=run_id),
    )
    if outcome.retry_user_ids and may_retry(retries=retries):
        record_batch(run_id=run_id, outcome=outcome)
        raise self.retry(
            args=[outcome.retry_user_ids, run_id, trigger],
            countdown=retry_countdown(retries=retries),
        )
    outcome.give_up_retries()
    record_batch(run_id=run_id, outcome=outcome)
    return {"run_id": run_id, **outcome.as_dict()}


@shared_task(name=SWEEP_PENDING_SYNCS_TASK)
def sweep_pending_syncs() -> dict:
    """Enqueue every recorded sync request that never ran (e.g. the broker was down)."""
    return {"enqueued": enqueue_outstanding_requests()}


def _not_synced(user_id: str, trigger: str, *, status: str, reason: str) -> dict:
    """The result of a sync_user that did not reconcile, shaped like a sync result."""
    return {
        "user_id": user_id,
        "trigger": trigger,
        "status": status,
        "error_code": reason,
        "changed": False,
    }


def _progress_reporter(task):
    """Report a run's progress as the task's PROGRESS state, which Flower shows."""

    def report(meta: dict) -> None:
        if task.request.id:
            task.update_state(state="PROGRESS", meta=meta)

    return report
