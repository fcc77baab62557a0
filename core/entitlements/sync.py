"""The sync itself: of one user, or of a batch: bookkeeping, fetch through the cache, reconcile."""

import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.utils import timezone

from core import metrics
from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.cache import fetch_entitlements
from core.entitlements.configuration_errors import report_configuration_error
from core.entitlements.errors import EntitlementsUnavailableError
from core.entitlements.reconcile import (
    RevocationBudget,
    SyncResult,
    UserAnswer,
    reconcile_admin_accesses,
    reconcile_many_admin_accesses,
)
from core.entitlements.upstream_guard import Priority
from core.models import EntitlementSyncState, Trigger, User

logger = logging.getLogger(__name__)

# Log level of a sync's line by answer: errors reach Sentry. A configuration error is the
# same for every user: each sync warns, and one ERROR per run or episode says what to check.
_LOG_LEVELS = {AnswerKind.INVALID: logging.ERROR, AnswerKind.CONFIGURATION: logging.WARNING}

# The only trigger that may take an answer from the cache's fresh window: nobody is waiting
# on it and it comes back every interval. Every other sync was asked for by a person (a login,
# the admin, the command line, or the sweep sending such a request that never ran).
_MAY_USE_FRESH_WINDOW = frozenset({Trigger.PERIODIC})
# A change signal's sync asks when it runs, after the settle delay: an answer asked earlier,
# even after the signal arrived, may predate the change DeployCenter had not committed yet.
_ASKS_WHEN_IT_RUNS = frozenset({Trigger.CHANGE_SIGNAL})


def answer_needed_since(*, trigger: Trigger, requested_at: datetime | None) -> datetime | None:
    """The freshness rule: the moment a sync's answer must have been asked at or after.

    None for the periodic run: a cached answer inside ENTITLEMENTS_CACHE_TIMEOUT will do.
    A person's request needs an answer asked after it was made (`requested_at`; now when the
    sync serves no recorded request): in practice it asks the upstream, unless another sync of
    the same user asked since the request (a login storm collapses into few calls). Either
    way, an upstream that is down is covered by the stale window. A change signal's sync
    needs an answer asked now.
    """
    if trigger in _MAY_USE_FRESH_WINDOW:
        return None
    if trigger in _ASKS_WHEN_IT_RUNS:
        return timezone.now()
    return requested_at or timezone.now()


def sync_user_entitlements(
    *,
    user_id: uuid.UUID | str,
    trigger: Trigger,
    task_id: str = "",
    dry_run: bool = False,
    priority: Priority = Priority.INTERACTIVE,
) -> SyncResult:
    """Fetch the user's entitlements and reconcile their ADMIN accesses; return what changed.

    The answer is as fresh as `answer_needed_since` says for the trigger and the user's latest
    recorded request; a dry run serves no recorded request, so it asks now.

    Raises User.DoesNotExist for an unknown id, and EntitlementsUnavailableError (after
    recording it) when the upstream is down and no stale answer is usable: retry later.
    Every other upstream failure is recorded and returned, and changes no access. `priority`
    says whether a person waits (login, manual) or a bulk run does, for the upstream rate limit.
    A user's own sync is never held by a revocation budget: their fresh answer is theirs.
    """
    user = User.objects.select_related("sync_state").get(pk=user_id)
    requested_at = None if dry_run else _requested_at(user)
    if not dry_run:
        _mark_started([user])
    try:
        answer = fetch_user_answer(
            user=user, trigger=trigger, requested_at=requested_at, priority=priority
        )
    except EntitlementsUnavailableError as error:
        if dry_run:
            _log_unavailable(user, trigger=trigger, error=error)
        else:
            record_sync_unavailable(user=user, trigger=trigger, task_id=task_id, error=error)
        raise
    result = reconcile_admin_accesses(
        user=user, answer=answer, trigger=trigger, task_id=task_id, dry_run=dry_run
    )
    _log_result(result, answer=answer, dry_run=dry_run)
    if answer.kind is AnswerKind.CONFIGURATION:
        report_configuration_error(error_code=answer.error_code)
    return result


def start_user_syncs(*, user_ids: Iterable[uuid.UUID | str]) -> list[User]:
    """Load the users (with their sync state) and record their syncs started: two queries.

    The first step of a batch sync: then fetch_user_answer for each user (threads welcome: it
    makes no database query), then finish_user_syncs. Unknown ids are left out of the list.
    """
    users = list(User.objects.select_related("sync_state").filter(pk__in=list(user_ids)))
    _mark_started(users)
    return users


def fetch_user_answer(
    *,
    user: User,
    trigger: Trigger,
    requested_at: datetime | None = None,
    priority: Priority = Priority.INTERACTIVE,
) -> UpstreamAnswer:
    """The user's classified answer, through the shared cache and the upstream guard.

    As fresh as `answer_needed_since(trigger=, requested_at=)` says: a run's batch passes no
    `requested_at`, so a run a person started asks now and the periodic run may use the cache.
    Reads the forwarded claims of a user loaded with their sync state (select_related), so it
    makes no database query. Raises EntitlementsUnavailableError.
    """
    try:
        forwarded_claims = user.sync_state.forwarded_claims
    except EntitlementSyncState.DoesNotExist:
        forwarded_claims = {}
    return fetch_entitlements(
        user=user,
        forwarded_claims=forwarded_claims,
        fetched_since=answer_needed_since(trigger=trigger, requested_at=requested_at),
        priority=priority,
    )


def finish_user_syncs(
    *,
    answers: Sequence[UserAnswer],
    trigger: Trigger,
    task_id: str = "",
    revocation_budget: RevocationBudget | None = None,
) -> list[SyncResult]:
    """Reconcile many users' fetched answers in one transaction and log each; results in order.

    Each user ends as sync_user_entitlements would end them, in a fixed number of queries;
    a run passes its `revocation_budget`.
    """
    results = reconcile_many_admin_accesses(
        answers=answers, trigger=trigger, task_id=task_id, revocation_budget=revocation_budget
    )
    for (_user, answer), result in zip(answers, results, strict=True):
        _log_result(result, answer=answer, dry_run=False)
    return results


def record_sync_unavailable(
    *, user: User, trigger: Trigger, task_id: str, error: EntitlementsUnavailableError
) -> None:
    """Record that the upstream was unavailable for the user's sync; accesses stay as they were."""
    _log_unavailable(user, trigger=trigger, error=error)
    metrics.sync_ended(trigger=trigger, outcome=EntitlementSyncState.Status.UNAVAILABLE)
    EntitlementSyncState.objects.filter(user=user).update(
        status=EntitlementSyncState.Status.UNAVAILABLE,
        error_code=error.error_code,
        finished_at=timezone.now(),
        last_trigger=trigger,
        last_task_id=task_id,
    )


def _requested_at(user: User) -> datetime | None:
    """The user's latest recorded request (loaded with the user), if any."""
    try:
        return user.sync_state.requested_at
    except EntitlementSyncState.DoesNotExist:
        return None


def record_syncs_not_run(
    *, user_ids: Iterable[uuid.UUID | str], trigger: Trigger, task_id: str, error_code: str
) -> None:
    """Record users of a stopped run as failed with `error_code`, without asking: one UPDATE.

    Ends the syncs the run had started for them, so the sweep does not take them for stuck.
    """
    EntitlementSyncState.objects.filter(user_id__in=list(user_ids)).update(
        status=EntitlementSyncState.Status.ERROR,
        error_code=error_code,
        finished_at=timezone.now(),
        last_trigger=trigger,
        last_task_id=task_id,
    )


def _log_unavailable(user: User, *, trigger: str, error: EntitlementsUnavailableError) -> None:
    logger.warning(
        "sync of user %s (%s): upstream unavailable (%s)", user.pk, trigger, error.error_code
    )


def _log_result(result: SyncResult, *, answer: UpstreamAnswer, dry_run: bool) -> None:
    if not dry_run:
        metrics.sync_ended(trigger=result.trigger, outcome=result.status)
    level = _LOG_LEVELS.get(answer.kind, logging.INFO)
    logger.log(
        level,
        "sync of user %s (%s): %s%s, +%d -%d, %d held, cache %s%s",
        result.user_id,
        result.trigger,
        result.status,
        f" ({result.error_code})" if result.error_code else "",
        len(result.added),
        len(result.removed),
        len(result.held),
        result.cache,
        " (dry run)" if dry_run else "",
    )


def _mark_started(users: Sequence[User]) -> None:
    """Record the start at once (one upsert for all), so a sync in progress shows."""
    if not users:
        return
    now = timezone.now()
    EntitlementSyncState.objects.bulk_create(
        # By id: a `user=` here would replace the user's loaded sync state (and its claims).
        [EntitlementSyncState(user_id=user.pk, started_at=now) for user in users],
        update_conflicts=True,
        unique_fields=["user"],
        update_fields=["started_at"],
    )
