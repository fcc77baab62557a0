"""Celery tasks of the entitlements sync: thin wrappers adding retries to core's services.

Arguments are ids and a trigger name, results are small JSON dicts: no email, claim or
token ever reaches the broker, the result backend or Flower. A result's `status` takes the
values of the user's sync state (EntitlementSyncState.Status). A sync that applied no
authoritative answer (invalid, error, unavailable) ends by raising SyncNotApplied, so Flower
shows it failed; it is an expected outcome (`throws`): no traceback, no Sentry event.
"""

import logging
import time

from celery import shared_task
from django.conf import settings

from core.entitlements import (
    run_resync,
    sweep,
    sync_run_batch,
    sync_user_entitlements,
)
from core.entitlements.change_signals import (
    RecheckDecision,
    after_signal_sync,
    organisation_recheck,
    postpone_signal_sync,
    run_organisation_resync,
    signal_sync_starting,
)
from core.locks import SYNC_USER_TIME_LIMIT
from core.models import FAILED_SYNC_STATUSES, EntitlementSyncState, SyncRun, Trigger, User
from core.task_names import TaskName
from worker.retry import circuit_reopens_in, may_retry, retry_countdown

logger = logging.getLogger(__name__)

Status = EntitlementSyncState.Status


class SyncNotApplied(Exception):
    """A user's sync ended without applying an authoritative answer; the message says why."""


class RunFailed(Exception):
    """A batch of a run that failed: its one argument is the batch's totals with the run's
    status and error code, so Flower and the result backend show the failure and its counts."""


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
    signal_phase: str | None = None,
) -> dict:
    """Sync one user's admin accesses; retry while the upstream is down or another sync runs.

    A change signal's sync passes when the signal arrived and which ask of its round it is
    (`signal_phase`, shown in Flower; `recheck` is how a task sent before rounds said it):
    its round decides whether it asks now or waits for the user's signals to pause, and what
    follows it (after_signal_sync). Raises SyncNotApplied, after recording, when no
    authoritative answer was applied. A sync skipped because another held the user's lock ends
    `skipped` (`locked`) once the retries are spent: its request stays recorded for the sweep.
    """
    retries = self.request.retries
    if trigger == Trigger.CHANGE_SIGNAL:
        phase, wait = signal_sync_starting(user_id=user_id)
        if wait:
            postpone_signal_sync(
                user_id=user_id,
                seconds=wait,
                task_kwargs={"signalled_at": signalled_at, "signal_phase": phase},
            )
            return _not_synced(user_id, trigger, status=Status.PENDING, reason="postponed")
        asked_at = time.time()
    try:
        result = sync_user_entitlements(
            user_id=user_id, trigger=trigger, task_id=self.request.id or ""
        )
    except User.DoesNotExist:
        return _not_synced(user_id, trigger, status=Status.SKIPPED, reason="unknown_user")
    if result.worth_retrying:
        if may_retry(retries=retries):
            raise self.retry(
                countdown=retry_countdown(retries=retries, circuit_reopens_in=circuit_reopens_in())
            )
        logger.warning("sync of user %s (%s): retries exhausted", user_id, trigger)
    if trigger == Trigger.CHANGE_SIGNAL:
        after_signal_sync(
            user_id=user_id,
            result=result,
            signalled_at=signalled_at,
            phase=phase,
            asked_at=asked_at,
        )
    # A sync that applied no authoritative answer: the task ends failed (SyncNotApplied).
    if result.status in FAILED_SYNC_STATUSES:
        raise _not_applied(user_id, trigger, result.status, result.error_code)
    return result.as_dict()


@shared_task(bind=True, name=TaskName.SYNC_ALL_ADMINS)
def sync_all_admins(self, trigger: Trigger | None = None) -> dict:
    """Resync every user the periodic run covers, in batches on the bulk queue.

    Without a trigger: `periodic` when beat sent it, else a task sent by hand (Flower).
    """
    return run_resync(
        trigger=trigger or _trigger_of_untold(self.request),
        task_id=self.request.id or "",
        on_progress=_progress_reporter(self),
    )


@shared_task(bind=True, name=TaskName.SYNC_DOMAIN_ADMINS)
def sync_domain_admins(self, maildomain_id: str, trigger: Trigger = Trigger.ADMIN) -> dict:
    """Resync the admins of one mail domain and those last told they may administer it."""
    return run_resync(
        maildomain_id=maildomain_id,
        trigger=trigger,
        task_id=self.request.id or "",
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
    recheck_after = settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS
    if recheck_of_run is not None:
        decision = organisation_recheck(run_id=recheck_of_run)
        if decision is RecheckDecision.WAIT:
            raise self.retry(countdown=recheck_after)
        if decision is RecheckDecision.NOT_NEEDED:
            return {"run_status": SyncRun.Status.SKIPPED, "reason": "first_run_changed_rights"}
    result = run_organisation_resync(
        user_id=user_id,
        trigger=trigger,
        task_id=self.request.id or "",
        on_progress=_progress_reporter(self),
    )
    if recheck_of_run is None and "run_id" in result:
        self.apply_async(
            args=[user_id, trigger],
            kwargs={"recheck_of_run": result["run_id"]},
            countdown=recheck_after,
        )
    return result


@shared_task(bind=True, name=TaskName.SYNC_USERS_BATCH, max_retries=None, throws=(RunFailed,))
def sync_users_batch(self, user_ids: list[str], run_id: int, trigger: Trigger) -> dict:
    """Sync a batch of a run's users concurrently; retry those whose upstream was down.

    Returns the batch's totals with its run's status once they are counted; a batch of a run
    that failed (e.g. stopped by a configuration error) ends by raising RunFailed with them.
    """
    retries = self.request.retries
    tally = sync_run_batch(
        run_id=run_id,
        user_ids=user_ids,
        trigger=trigger,
        task_id=self.request.id or "",
        attempt=retries,
        last_try=not may_retry(retries=retries),
    )
    if tally.retry_user_ids:
        raise self.retry(
            args=[tally.retry_user_ids, run_id, trigger],
            countdown=retry_countdown(retries=retries, circuit_reopens_in=circuit_reopens_in()),
        )
    run = SyncRun.objects.only("status", "error_code").get(pk=run_id)
    totals = {
        "run_id": run_id,
        "run_status": run.status,
        "run_error_code": run.error_code,
        **tally.as_dict(),
    }
    if run.status == SyncRun.Status.FAILED:
        raise RunFailed(totals)
    return totals


# Runs every minute and usually sends nothing: its results would flood the result backend
# and Flower, so none is kept; what it sends is logged.
@shared_task(name=TaskName.SWEEP_PENDING_SYNCS, ignore_result=True)
def sweep_pending_syncs() -> int:
    """Enqueue every recorded sync request that never ran (e.g. the broker was down), and
    close the runs whose batches were lost."""
    sent = sweep()
    if sent:
        logger.info("sweep: %d sync request(s) re-enqueued", sent)
    return sent


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
    return Trigger.HAND_SENT_TASK


def _progress_reporter(task):
    """Report a run's progress as the task's PROGRESS state, which Flower shows."""

    def report(meta: dict) -> None:
        if task.request.id:
            task.update_state(state="PROGRESS", meta=meta)

    return report
