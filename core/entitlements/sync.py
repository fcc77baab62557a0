"""The sync itself: of one user, or of a batch: bookkeeping, fetch through the cache, reconcile."""

import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from django.utils import timezone

from core import metrics
from core.entitlements import cache
from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.configuration_errors import (
    report_configuration_error,
    report_invalid_answer,
)
from core.entitlements.errors import EntitlementsUnavailableError
from core.entitlements.factory import get_backend
from core.entitlements.reconcile import (
    RevocationBudget,
    UserAnswer,
    plan_admin_accesses,
    reconcile_admin_accesses,
    reconcile_many_admin_accesses,
)
from core.entitlements.results import LOCKED, SyncResult
from core.entitlements.upstream_guard import Priority, admit_upstream_call
from core.locks import TTLLock, user_lock
from core.models import EntitlementSyncState, Trigger, User
from core.selectors import running_sync_serves_request

logger = logging.getLogger(__name__)

# Log level of a sync's line by answer. A configuration error or an invalid answer is the
# same for every user: each sync warns, and one ERROR (Sentry) per run or episode says so.
_LOG_LEVELS = {AnswerKind.INVALID: logging.WARNING, AnswerKind.CONFIGURATION_ERROR: logging.WARNING}

# The only trigger that may take an answer from the cache's fresh window: nobody is waiting
# on it and it comes back every interval. Every other sync was asked for by a person (a login,
# the admin, the command line, or the sweep sending such a request that never ran).
_MAY_USE_FRESH_WINDOW = frozenset({Trigger.PERIODIC})
# A change signal's sync asks when it runs, after the settle delay: an answer asked earlier,
# even after the signal arrived, may predate the change DeployCenter had not committed yet.
_ASKS_WHEN_IT_RUNS = frozenset({Trigger.CHANGE_SIGNAL})
# Nobody waits on a change signal's sync: it takes the rate limit's bulk share, so that a storm
# of signals leaves the reserve to logins.
_NOBODY_WAITS = frozenset({Trigger.CHANGE_SIGNAL})


def answer_needed_since(*, trigger: Trigger, requested_at: datetime | None) -> datetime | None:
    """The freshness rule: the moment a sync's answer must have been asked at or after.

    None for the periodic run: a cached answer inside ENTITLEMENTS_CACHE_TIMEOUT_SECONDS will do.
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
) -> SyncResult:
    """Fetch the user's entitlements and reconcile their ADMIN accesses; return what changed.

    The answer is as fresh as `answer_needed_since` says for the trigger and the user's latest
    recorded request. A person waits on this sync (a login, the admin, the command line, the
    sweep sending their request): it asks at interactive priority, for the upstream rate
    limit; a change signal's, which nobody waits on, at bulk priority.

    Runs under the user's lock, owned by `task_id` (a redelivered task takes back the lock its
    killed run left). While another sync of the user holds it, the result is `skipped`:
    `served_by_running_sync` when that sync started after the user's latest request, else
    `locked` (worth another try; the request stays recorded for the sweep).

    Raises User.DoesNotExist for an unknown id. Every upstream failure is recorded and
    returned, and changes no access: an `unavailable` result (the upstream is down and no
    stale answer is usable) is worth another try later (`SyncResult.worth_retrying`). A
    user's own sync is never held by a revocation budget: their fresh answer is theirs.
    """
    lock = user_lock(user_id, owner=task_id)
    if not lock.acquire():
        # The running sync may have asked before a signalled change settled (DeployCenter
        # signals before it commits): a change signal's sync waits its turn instead.
        served = trigger != Trigger.CHANGE_SIGNAL and running_sync_serves_request(user_id=user_id)
        return SyncResult(
            user_id=str(user_id),
            trigger=trigger,
            status=str(EntitlementSyncState.Status.SKIPPED),
            error_code="served_by_running_sync" if served else LOCKED,
        )
    try:
        return _sync_user(user_id=user_id, trigger=trigger, task_id=task_id)
    finally:
        lock.release()


def _sync_user(*, user_id: uuid.UUID | str, trigger: Trigger, task_id: str) -> SyncResult:
    """The user's sync, their lock held."""
    user = User.objects.select_related("sync_state").get(pk=user_id)
    requested_at = _requested_at(user)
    _mark_started([user])
    try:
        answer = fetch_user_answer(
            user=user,
            trigger=trigger,
            requested_at=requested_at,
            priority=Priority.BULK if trigger in _NOBODY_WAITS else Priority.INTERACTIVE,
        )
    except EntitlementsUnavailableError as error:
        record_sync_unavailable(user=user, trigger=trigger, task_id=task_id, error=error)
        return _unavailable_result(user, trigger=trigger, error=error)
    result = reconcile_admin_accesses(user=user, answer=answer, trigger=trigger, task_id=task_id)
    metrics.sync_ended(trigger=result.trigger, status=result.status)
    _log_result(result, answer=answer)
    if answer.kind is AnswerKind.CONFIGURATION_ERROR:
        report_configuration_error(error_code=answer.error_code)
    elif answer.kind is AnswerKind.INVALID:
        report_invalid_answer(user_id=user.pk, error_code=answer.error_code, run_id=None)
    return result


def plan_sync(*, user_id: uuid.UUID | str, in_run: bool = False) -> SyncResult:
    """The dry run of one user's sync: what it would change now, written nowhere.

    Asks the upstream now (through the cache and the guard, as a command-line sync would) and
    plans the reconcile without a run's budget (the caller applies it); `in_run` plans it as
    a run's batch does (an ended subscription past its window is revoked). Records nothing,
    counts no metric. An upstream that is down gives an `unavailable` result. Raises
    User.DoesNotExist.
    """
    user = User.objects.select_related("sync_state").get(pk=user_id)
    trigger = Trigger.COMMAND
    try:
        answer = fetch_user_answer(user=user, trigger=trigger, requested_at=timezone.now())
    except EntitlementsUnavailableError as error:
        _log_unavailable(user, trigger=trigger, error=error)
        return _unavailable_result(user, trigger=trigger, error=error)
    [result] = plan_admin_accesses(answers=[(user, answer)], trigger=trigger, in_run=in_run)
    _log_result(result, answer=answer, note=" (dry run)")
    return result


# What a batch reads of its users: the e-mail and claims asked upstream (the shipped backends
# read no other field: one a custom backend reads costs a query per user, not a failure).
# Loading only these saves building the rest of every row.
_BATCH_USER_FIELDS = ("id", "email", "sync_state__forwarded_claims")


def load_users_starting_sync(*, user_ids: Iterable[uuid.UUID | str]) -> list[User]:
    """Load the users (with their sync state) and record their syncs started: two queries.

    The first step of a batch sync: then fetch_user_answer for each user (threads welcome: it
    makes no database query), then reconcile_fetched_answers. Unknown ids are left out of the list.
    """
    users = list(
        User.objects.select_related("sync_state")
        .filter(pk__in=list(user_ids))
        .only(*_BATCH_USER_FIELDS)
    )
    _mark_started(users)
    return users


def fetch_user_answer(
    *,
    user: User,
    trigger: Trigger,
    requested_at: datetime | None = None,
    priority: Priority = Priority.INTERACTIVE,
) -> UpstreamAnswer:
    """The user's classified answer: cached if fresh enough, else asked upstream, else stale.

    As fresh as `answer_needed_since(trigger=, requested_at=)` says: a run's batch passes no
    `requested_at`, so a run a person started asks now and the periodic run may use the cache.
    When the upstream is unavailable (an open circuit or an exhausted rate limit counts), the
    cached answer is served as stale while younger than ENTITLEMENTS_STALE_FALLBACK_SECONDS;
    past that, EntitlementsUnavailableError. Reads the forwarded claims of a user loaded with
    their sync state (select_related), so it makes no database query.
    """
    answer, to_cache = fetch_answer_to_cache(
        user=user, trigger=trigger, requested_at=requested_at, priority=priority
    )
    if to_cache is not None:
        cache.store_entries([to_cache])
    return answer


def fetch_answer_to_cache(
    *,
    user: User,
    trigger: Trigger,
    requested_at: datetime | None = None,
    priority: Priority = Priority.INTERACTIVE,
    cached: Any = cache.UNREAD,
    lock: TTLLock | None = None,
) -> tuple[UpstreamAnswer, cache.Entry | None]:
    """fetch_user_answer, leaving the cache write of a new answer to the caller.

    A batch writes its users' new answers together, and passes each user's entry as `cached`
    when it read them all at once beforehand (`cache.read_entries`; None: the user had none).
    Raises EntitlementsUnavailableError as fetch_user_answer does.
    A batch also passes the user's `lock`, not taken yet: it is taken here, in the upstream
    guard's round trip when the upstream is asked (alone otherwise), and held by whatever this
    returns or raises after; LockHeld if another sync of the user holds it.
    """
    try:
        forwarded_claims = user.sync_state.forwarded_claims
    except EntitlementSyncState.DoesNotExist:
        forwarded_claims = {}
    fresh = cache.read_fresh_answer(
        user=user,
        forwarded_claims=forwarded_claims,
        asked_since=answer_needed_since(trigger=trigger, requested_at=requested_at),
        entry=cached,
    )
    if fresh is not None:
        if lock is not None:
            lock.acquire_or_raise()
        return fresh, None
    # The answer dates from when it was asked: one asked before a request cannot honour it,
    # even if it arrives after.
    asked_at = time.time()
    answer = _ask_upstream(
        user=user, forwarded_claims=forwarded_claims, priority=priority, lock=lock
    )
    if answer.kind is not AnswerKind.UNAVAILABLE:
        to_cache = cache.answer_entry(
            user=user, forwarded_claims=forwarded_claims, answer=answer, asked_at=asked_at
        )
        return answer, to_cache
    # Read now, not from `cached`: an answer another sync cached meanwhile may stand in.
    stale = cache.read_stale_answer(user=user, forwarded_claims=forwarded_claims)
    if stale is not None:
        return stale, None
    raise EntitlementsUnavailableError(answer.error_code)


def _ask_upstream(
    *,
    user: User,
    forwarded_claims: Mapping[str, Any],
    priority: Priority,
    lock: TTLLock | None,
) -> UpstreamAnswer:
    """One call to the backend; a remote one only if the guard admits it, told how it went.

    `lock` (not taken yet) is taken before the call: by the guard, with its admission.
    """
    backend = get_backend()
    if not backend.guard_upstream_calls:
        if lock is not None:
            lock.acquire_or_raise()
        return backend.get_entitlements(user=user, forwarded_claims=forwarded_claims)
    with admit_upstream_call(priority=priority, lock=lock) as call:
        if call.refused:
            return UpstreamAnswer.failure(AnswerKind.UNAVAILABLE, call.refused)
        answer = backend.get_entitlements(user=user, forwarded_claims=forwarded_claims)
        call.record(available=answer.kind is not AnswerKind.UNAVAILABLE)
    return answer


def reconcile_fetched_answers(
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
    run_id = revocation_budget.run_id if revocation_budget is not None else None
    for (user, answer), result in zip(answers, results, strict=True):
        metrics.sync_ended(trigger=result.trigger, status=result.status)
        _log_result(result, answer=answer)
        if answer.kind is AnswerKind.INVALID:
            report_invalid_answer(user_id=user.pk, error_code=answer.error_code, run_id=run_id)
    return results


def record_sync_unavailable(
    *, user: User, trigger: Trigger, task_id: str, error: EntitlementsUnavailableError
) -> None:
    """Record that the upstream was unavailable for the user's sync; accesses stay as they were."""
    _log_unavailable(user, trigger=trigger, error=error)
    metrics.sync_ended(trigger=trigger, status=EntitlementSyncState.Status.UNAVAILABLE)
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


def end_syncs_not_run(*, user_ids: Iterable[uuid.UUID | str]) -> None:
    """End the syncs a stopped run started but never asked: one UPDATE. Their status, error
    code and last answer stay as they were; the end only tells the sweep they are not stuck."""
    EntitlementSyncState.objects.filter(user_id__in=list(user_ids)).update(
        finished_at=timezone.now()
    )


def _log_unavailable(user: User, *, trigger: str, error: EntitlementsUnavailableError) -> None:
    logger.warning(
        "sync of user %s (%s): upstream unavailable (%s)", user.pk, trigger, error.error_code
    )


def _unavailable_result(
    user: User, *, trigger: Trigger, error: EntitlementsUnavailableError
) -> SyncResult:
    """The result of a sync whose upstream was unavailable: nothing changed."""
    return SyncResult(
        user_id=str(user.pk),
        trigger=trigger,
        status=str(EntitlementSyncState.Status.UNAVAILABLE),
        error_code=error.error_code,
    )


def _log_result(result: SyncResult, *, answer: UpstreamAnswer, note: str = "") -> None:
    """The sync's one line; an invalid answer's is an ERROR (Sentry gets it)."""
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
        note,
    )


def _mark_started(users: Sequence[User]) -> None:
    """Record the start at once, so a sync in progress shows.

    One UPDATE for the users loaded with their state row (nearly all), one upsert for the
    others: the upsert of every row built a model and bound every column of each.
    """
    if not users:
        return
    now = timezone.now()
    with_state = [user.pk for user in users if _has_sync_state(user)]
    updated = EntitlementSyncState.objects.filter(user_id__in=with_state).update(started_at=now)
    # A row deleted since the users were loaded: upsert them all rather than find which.
    upserted = users if updated < len(with_state) else [u for u in users if not _has_sync_state(u)]
    if upserted:
        EntitlementSyncState.objects.bulk_create(
            # By id: a `user=` here would replace the user's loaded sync state (and its claims).
            [EntitlementSyncState(user_id=user.pk, started_at=now) for user in upserted],
            update_conflicts=True,
            unique_fields=["user"],
            update_fields=["started_at"],
        )


def _has_sync_state(user: User) -> bool:
    """Whether the user (loaded with select_related) has a state row; no query."""
    try:
        user.sync_state  # noqa: B018 (the lookup is the test)
    except EntitlementSyncState.DoesNotExist:
        return False
    return True
