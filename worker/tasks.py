"""Celery tasks of the entitlements sync: thin wrappers adding locks, retries and counting.

Arguments are ids and a trigger name, results are small JSON dicts: no email, claim or
token ever reaches the broker, the result backend or Flower. A result's `status` takes the
values of the user's sync state (EntitlementSyncState.Status). A sync that applied no
authoritative answer (invalid, error, unavailable) ends by raising SyncNotApplied, so Flower
shows it failed; it is an expected outcome (`throws`): no traceback, no Sentry event.
"""

import logging

from celery import shared_task
from django.conf import settings

from core.entitlements import (
    EntitlementsUnavailableError,
    Priority,
    SyncResult,
    TaskName,
    change_signals,
    enqueue_outstanding_requests,
    runs,
    sync_user_entitlements,
)
from core.models import EntitlementSyncState, MailDomain, SyncRun, Trigger, User
from core.selectors import (
    organisation_siret_of,
    running_sync_serves_request,
    users_due_for_full_resync,
    users_of_domain,
    users_of_organisation,
)
from worker.batches import sync_batch
from worker.fan_out import run_resync
from worker.locks import SYNC_USER_TIME_LIMIT, user_lock
from worker.retry import may_retry, retry_countdown

logger = logging.getLogger(__name__)

Status = EntitlementSyncState.Status


class SyncNotApplied(Exception):
    """A user's sync ended without applying an authoritative answer; the message says why."""


# max_retries=None: the bound is ENTITLEMENTS_SYNC_MAX_RETRIES, applied by worker.retry.
@shared_task(
    bind=True,
    name=TaskName.SYNC_USER,
    max_retries=None,
    time_limit=SYNC_USER_TIME_LIMIT,
    soft_time_limit=SYNC_USER_TIME_LIMIT - 5,
    # Expected: Celery logs it without a traceback and Sentry's integration ignores it.
    throws=(SyncNotApplied,),
)
def sync_user(
    self,
    user_id: str,
    trigger: Trigger,
    signalled_at: float | None = None,
    recheck: bool = False,
) -> dict:
    """Sync one user's admin accesses; retry while the upstream is down or another sync runs.

    A change signal's sync passes when the signal arrived, and `recheck` for its first sync
    (change_signals.after_signal_sync). Raises SyncNotApplied, after recording, when no
    authoritative answer was applied.
    """
    retries = self.request.retries
    try:
        result = _sync_under_lock(user_id=user_id, trigger=trigger, task_id=self.request.id or "")
    except EntitlementsUnavailableError as error:
        # The engine recorded the failure and left every access as it was.
        if may_retry(retries=retries):
            raise self.retry(countdown=retry_countdown(retries=retries)) from error
        logger.warning("sync of user %s (%s): retries exhausted", user_id, trigger)
        raise _not_applied(user_id, trigger, Status.UNAVAILABLE, error.error_code) from None
    except User.DoesNotExist:
        return _not_synced(user_id, trigger, status=Status.SKIPPED, reason="unknown_user")
    if result is not None:
        if runs.outcome_of(result) == runs.Outcome.FAILED:
            raise _not_applied(user_id, trigger, result.status, result.error_code)
        if trigger == Trigger.CHANGE_SIGNAL:
            change_signals.after_signal_sync(
                user_id=user_id, result=result, signalled_at=signalled_at, recheck=recheck
            )
        return result.as_dict()
    # Another sync of this user holds the lock. It may have asked before a signalled change
    # settled: a signal's sync waits its turn instead.
    if trigger != Trigger.CHANGE_SIGNAL and running_sync_serves_request(user_id=user_id):
        return _not_synced(user_id, trigger, status=Status.SKIPPED, reason="served_by_running_sync")
    if may_retry(retries=retries):
        raise self.retry(countdown=retry_countdown(retries=retries))
    # Still recorded as requested and unserved: the sweep sends it again later.
    return _not_synced(user_id, trigger, status=Status.SKIPPED, reason="locked")


@shared_task(bind=True, name=TaskName.SYNC_ALL_ADMINS)
def sync_all_admins(self, trigger: Trigger | None = None) -> dict:
    """Resync every user the periodic run covers, in batches on the bulk queue.

    Without a trigger: `periodic` when beat sent it, else a run started by hand (Flower).
    """
    return run_resync(
        scope=SyncRun.Scope.ALL,
        scope_key="all",
        trigger=trigger or _trigger_of_untold(self.request),
        task_id=self.request.id or "",
        user_ids=users_due_for_full_resync(),
        on_progress=_progress_reporter(self),
    )


@shared_task(bind=True, name=TaskName.SYNC_DOMAIN_ADMINS)
def sync_domain_admins(self, maildomain_id: str, trigger: Trigger = Trigger.ADMIN) -> dict:
    """Resync the admins of one mail domain and those last told they may administer it."""
    maildomain = MailDomain.objects.filter(pk=maildomain_id).first()
    if maildomain is None:
        return {"run_status": SyncRun.Status.SKIPPED, "reason": "unknown_domain"}
    return run_resync(
        scope=SyncRun.Scope.DOMAIN,
        scope_key=f"domain:{maildomain.pk}",
        maildomain_name=maildomain.name,
        trigger=trigger,
        task_id=self.request.id or "",
        user_ids=users_of_domain(maildomain=maildomain),
        on_progress=_progress_reporter(self),
    )


@shared_task(bind=True, name=TaskName.SYNC_ORGANISATION_ADMINS, max_retries=None)
def sync_organisation_admins(
    self, user_id: str, trigger: Trigger = Trigger.CHANGE_SIGNAL, recheck_of_run: int | None = None
) -> dict:
    """Resync the users sharing the stored siret claim of `user_id` (an organisation's signal).

    The first run then sends its recheck: unless the run changed someone's rights, a second
    run ENTITLEMENTS_CHANGE_RECHECK_SECONDS later (`recheck_of_run`, waiting for the first
    to end).
    """
    siret = organisation_siret_of(user_id=user_id)
    if not siret:
        return {"run_status": SyncRun.Status.SKIPPED, "reason": "unknown_organisation"}
    recheck_after = settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS
    if recheck_of_run is not None:
        decision = change_signals.organisation_recheck(run_id=recheck_of_run)
        if decision is change_signals.RecheckDecision.WAIT:
            raise self.retry(countdown=recheck_after)
        if decision is change_signals.RecheckDecision.NOT_NEEDED:
            return {"run_status": SyncRun.Status.SKIPPED, "reason": "first_run_changed_rights"}
    result = run_resync(
        scope=SyncRun.Scope.ORGANISATION,
        scope_key=change_signals.organisation_scope_key(siret),
        organization_siret=siret,
        trigger=trigger,
        task_id=self.request.id or "",
        user_ids=users_of_organisation(siret=siret),
        on_progress=_progress_reporter(self),
    )
    if recheck_of_run is None:
        self.apply_async(
            args=[user_id, trigger],
            kwargs={"recheck_of_run": result["run_id"]},
            countdown=recheck_after,
        )
    return result


@shared_task(bind=True, name=TaskName.SYNC_USERS_BATCH, max_retries=None)
def sync_users_batch(self, user_ids: list[str], run_id: int, trigger: Trigger) -> dict:
    """Sync a batch of a run's users concurrently; retry those whose upstream was down."""
    retries = self.request.retries
    outcome = sync_batch(
        user_ids=user_ids,
        trigger=trigger,
        task_id=self.request.id or "",
        # The run's budget: beyond it, the batch holds revocations instead of applying them.
        revocation_budget=runs.RunRevocationBudget(run_id=run_id),
        run_id=run_id,
    )
    if outcome.retry_user_ids and may_retry(retries=retries):
        runs.record_batch(run_id=run_id, outcome=outcome)
        raise self.retry(
            args=[outcome.retry_user_ids, run_id, trigger],
            countdown=retry_countdown(retries=retries),
        )
    outcome.give_up_retries()
    runs.record_batch(run_id=run_id, outcome=outcome)
    return {"run_id": run_id, **outcome.as_dict()}


# Runs every minute and usually sends nothing: its results would flood the result backend
# and Flower, so none is kept; what it sends is logged.
@shared_task(name=TaskName.SWEEP_PENDING_SYNCS, ignore_result=True)
def sweep_pending_syncs() -> int:
    """Enqueue every recorded sync request that never ran (e.g. the broker was down)."""
    sent = enqueue_outstanding_requests()
    if sent:
        logger.info("sweep: %d sync request(s) re-enqueued", sent)
    return sent


def _sync_under_lock(*, user_id, trigger: Trigger, task_id: str) -> SyncResult | None:
    """Run the user's sync while holding their lock; None if another sync holds it.

    Raises what the sync raises, EntitlementsUnavailableError included, lock released.
    """
    lock = user_lock(user_id, owner=task_id)
    if not lock.acquire():
        return None
    # Nobody waits on a change signal's sync: the rate limit's reserve stays for logins,
    # which a storm of signals must not delay.
    priority = Priority.BULK if trigger == Trigger.CHANGE_SIGNAL else Priority.INTERACTIVE
    try:
        return sync_user_entitlements(
            user_id=user_id, trigger=trigger, task_id=task_id, priority=priority
        )
    finally:
        lock.release()


def _not_synced(user_id: str, trigger: str, *, status: Status, reason: str) -> dict:
    """The result of a sync_user that did not reconcile, shaped like a sync result."""
    return {
        "user_id": user_id,
        "trigger": trigger,
        "status": status,
        "error_code": reason,
        "changed": False,
    }


def _not_applied(user_id: str, trigger: str, status: str, error_code: str) -> SyncNotApplied:
    """The task's failure for a sync that applied no answer: ids and codes, no personal data."""
    return SyncNotApplied(
        f"sync of user {user_id} ({trigger}) not applied: {status}"
        + (f" ({error_code})" if error_code else "")
    )


def _trigger_of_untold(request) -> Trigger:
    """The trigger of a run sent without one: beat's (django-celery-beat names its entry in a
    header) is periodic, anything else was started by hand."""
    if getattr(request, "periodic_task_name", None):
        return Trigger.PERIODIC
    return Trigger.MANUAL


def _progress_reporter(task):
    """Report a run's progress as the task's PROGRESS state, which Flower shows."""

    def report(meta: dict) -> None:
        if task.request.id:
            task.update_state(state="PROGRESS", meta=meta)

    return report
