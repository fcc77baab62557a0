"""The sync of one user: bookkeeping, fetch through the shared cache, reconcile, log."""

import logging
import uuid

from django.utils import timezone

from core.entitlements.backends.base import AnswerKind
from core.entitlements.cache import fetch_entitlements
from core.entitlements.errors import EntitlementsUnavailableError
from core.entitlements.reconcile import RevocationGuard, SyncResult, reconcile_admin_accesses
from core.entitlements.upstream_guard import Priority
from core.models import EntitlementSyncState, User

logger = logging.getLogger(__name__)

# Classes an operator must act on: logged as errors, which Sentry reports.
_LOUD = frozenset({AnswerKind.INVALID, AnswerKind.CONFIGURATION})


def sync_user_entitlements(
    *,
    user_id: uuid.UUID | str,
    trigger: str,
    task_id: str = "",
    force_refresh: bool = False,
    dry_run: bool = False,
    priority: Priority = Priority.INTERACTIVE,
    revocation_guard: RevocationGuard | None = None,
) -> SyncResult:
    """Fetch the user's entitlements and reconcile their ADMIN accesses; return what changed.

    Raises User.DoesNotExist for an unknown id, and EntitlementsUnavailableError (after
    recording it) when the upstream is down and no stale answer is usable: retry later.
    Every other upstream failure is recorded and returned, and changes no access. `priority`
    says whether a person waits (login, manual) or a bulk run does, for the upstream rate limit.
    A resync run passes its `revocation_guard` (blast_radius.RunRevocationGuard).
    """
    user = User.objects.select_related("sync_state").get(pk=user_id)
    try:
        forwarded_claims = user.sync_state.forwarded_claims
    except EntitlementSyncState.DoesNotExist:
        forwarded_claims = {}
    if not dry_run:
        _mark_started(user)
    try:
        fetched = fetch_entitlements(
            user=user,
            forwarded_claims=forwarded_claims,
            force_refresh=force_refresh,
            priority=priority,
        )
    except EntitlementsUnavailableError as error:
        logger.warning(
            "sync of user %s (%s): upstream unavailable (%s)", user.pk, trigger, error.error_code
        )
        if not dry_run:
            _record_unavailable(user, trigger=trigger, task_id=task_id, error_code=error.error_code)
        raise
    result = reconcile_admin_accesses(
        user=user,
        answer=fetched.answer,
        trigger=trigger,
        task_id=task_id,
        dry_run=dry_run,
        cache=fetched.cache,
        revocation_guard=revocation_guard,
    )
    level = logging.ERROR if fetched.answer.kind in _LOUD else logging.INFO
    logger.log(
        level,
        "sync of user %s (%s): %s%s, +%d -%d, %d held, cache %s%s",
        user.pk,
        trigger,
        result.status,
        f" ({result.error_code})" if result.error_code else "",
        len(result.added),
        len(result.removed),
        len(result.held),
        result.cache,
        " (dry run)" if dry_run else "",
    )
    return result


def _mark_started(user: User) -> None:
    """Record the start at once (one upsert), so a sync in progress shows."""
    EntitlementSyncState.objects.bulk_create(
        [EntitlementSyncState(user=user, started_at=timezone.now())],
        update_conflicts=True,
        unique_fields=["user"],
        update_fields=["started_at"],
    )


def _record_unavailable(user: User, *, trigger: str, task_id: str, error_code: str) -> None:
    """Record an unavailable upstream; accesses and the last domain list stay as they were."""
    EntitlementSyncState.objects.filter(user=user).update(
        status=EntitlementSyncState.Status.UNAVAILABLE,
        error_code=error_code,
        finished_at=timezone.now(),
        last_trigger=trigger,
        last_task_id=task_id,
    )
