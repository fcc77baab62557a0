"""The one door to request an entitlements sync, the sweep of requests that never ran, and
the selectors of whom an admin-wide resync covers."""

import logging
import uuid
from datetime import datetime, timedelta
from functools import partial

import sentry_sdk
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Case, Exists, F, OuterRef, Q, QuerySet, Value, When
from django.utils import timezone

from core.entitlements import users_entitled_to
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User

logger = logging.getLogger(__name__)

# Tasks are named, not imported: core never imports the worker package (worker/queues.py
# registers the same names).
SYNC_USER_TASK = "entitlements.sync_user"
SYNC_ALL_ADMINS_TASK = "entitlements.sync_all_admins"
SYNC_DOMAIN_ADMINS_TASK = "entitlements.sync_domain_admins"


class SyncNotEnqueuedError(Exception):
    """The broker could not be reached: the resync was not started."""


# One quick reconnection attempt, then give up: a login must not hang on a dead broker, and
# the sweep enqueues whatever could not be sent.
_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0}


def request_sync(
    *,
    user: User,
    trigger: str,
    queue: str | None = None,
    forwarded_claims: dict | None = None,
) -> str | None:
    """Record that the user's entitlements need a sync and enqueue its task after commit.

    Requests for one user inside ENTITLEMENTS_SYNC_DEDUP_SECONDS collapse into the task the
    first of them queued. A login passes the `forwarded_claims` it stores on the way (same
    statement). Returns the id of the task that carries this request, or None when it was
    collapsed. Never raises for a broker that cannot be reached: the request stays recorded
    and `enqueue_outstanding_requests` (the sweep) sends it later.
    """
    now = timezone.now()
    fields = {"requested_at": now, "last_trigger": trigger}
    if forwarded_claims is not None:
        fields["forwarded_claims"] = forwarded_claims
    not_enqueued_since = now - timedelta(seconds=settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS)
    if not _record_and_claim(
        user_id=user.pk, fields=fields, now=now, not_enqueued_since=not_enqueued_since
    ):
        return None
    return _send_after_commit(user_id=user.pk, trigger=trigger, queue=queue, claimed_at=now)


def request_full_resync(*, trigger: str) -> str:
    """Start a resync of every admin (entitlements.sync_all_admins); return its task id.

    Raises SyncNotEnqueuedError when the broker cannot be reached.
    """
    return _send_resync(SYNC_ALL_ADMINS_TASK, args=[trigger])


def request_domain_resync(*, maildomain: MailDomain, trigger: str) -> str:
    """Start a resync of one domain's admins (entitlements.sync_domain_admins); return its id.

    Raises SyncNotEnqueuedError when the broker cannot be reached.
    """
    return _send_resync(SYNC_DOMAIN_ADMINS_TASK, args=[str(maildomain.pk), trigger])


def enqueue_outstanding_requests() -> int:
    """Enqueue a sync for every recorded request that no sync has served; return how many.

    A request is served by a sync that started after it. A request is left alone while a
    task sent for it is younger than ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS, and while a sync
    that started after it is still running and younger than that grace period.
    """
    now = timezone.now()
    grace = timedelta(seconds=settings.ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS)
    sent = 0
    for user_id, trigger in outstanding_requests(now=now, grace=grace).iterator(chunk_size=500):
        if not _claim(user_id=user_id, now=now, not_enqueued_since=now - grace):
            continue
        _send_after_commit(
            user_id=user_id,
            trigger=trigger or "sweep",
            queue=None,
            claimed_at=now,
            # A copy still queued when the next sweep sends another is useless: drop it.
            expires=grace.total_seconds(),
        )
        sent += 1
    return sent


def outstanding_requests(*, now: datetime, grace: timedelta) -> QuerySet:
    """(user id, trigger) of requests no sync has served and no recent task carries."""
    stuck_before = now - grace
    still_running = Q(finished_at__isnull=True) | Q(finished_at__lt=F("started_at"))
    return (
        EntitlementSyncState.objects.filter(requested_at__isnull=False)
        .filter(
            Q(started_at__isnull=True)
            | Q(started_at__lt=F("requested_at"))
            # The sync that took the request died without finishing.
            | (still_running & Q(started_at__lt=stuck_before))
        )
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=stuck_before))
        .order_by()
        .values_list("user_id", "last_trigger")
    )


def users_due_for_full_resync() -> QuerySet:
    """Ids of users the periodic resync covers.

    Those who hold a sync-created access (a revocation upstream must land), whose last
    answer named domains (some may have been provisioned since), and those whose last sync
    did not end well or never ran.
    """
    holds_synced_access = MailDomainAccess.objects.filter(
        user=OuterRef("pk"), source=MailDomainAccess.Source.ENTITLEMENTS
    )
    state = EntitlementSyncState.objects.filter(user=OuterRef("pk"))
    state_needs_sync = state.filter(
        ~Q(status=EntitlementSyncState.Status.OK) | ~Q(entitled_domains=[])
    )
    return (
        User.objects.filter(Exists(holds_synced_access) | ~Exists(state) | Exists(state_needs_sync))
        .order_by()
        .values_list("pk", flat=True)
    )


def users_of_domain(*, maildomain: MailDomain) -> QuerySet:
    """Ids of users a resync of one domain covers: its admins and those last told they may be."""
    return (
        User.objects.filter(
            Q(pk__in=MailDomainAccess.objects.filter(maildomain=maildomain).values("user_id"))
            | Q(pk__in=users_entitled_to(maildomain.name))
        )
        .order_by()
        .values_list("pk", flat=True)
    )


# A row's first request turns "never synced" into "pending"; later ones keep the last outcome.
_PENDING_IF_NEVER = Case(
    When(
        status=EntitlementSyncState.Status.NEVER,
        then=Value(EntitlementSyncState.Status.PENDING),
    ),
    default=F("status"),
)


def _record_and_claim(
    *, user_id, fields: dict, now: datetime, not_enqueued_since: datetime
) -> bool:
    """Write the request on the user's bookkeeping row; True when this call must enqueue.

    The usual case is one UPDATE: it records the request and claims the enqueue at once,
    unless a task was enqueued after `not_enqueued_since`. The database serialises
    concurrent requests on the row, so exactly one of them claims, in any process.
    """
    states = EntitlementSyncState.objects.filter(user_id=user_id)
    not_recently_enqueued = Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=not_enqueued_since)
    if states.filter(not_recently_enqueued).update(
        enqueued_at=now, status=_PENDING_IF_NEVER, **fields
    ):
        return True
    if states.update(status=_PENDING_IF_NEVER, **fields):
        return False
    # The user's first request: make the row, then record and claim as usual. ON CONFLICT DO
    # NOTHING lets a concurrent first request make it instead, without an error.
    EntitlementSyncState.objects.bulk_create(
        [EntitlementSyncState(user_id=user_id)], ignore_conflicts=True
    )
    return _record_and_claim(
        user_id=user_id, fields=fields, now=now, not_enqueued_since=not_enqueued_since
    )


def _claim(*, user_id, now: datetime, not_enqueued_since: datetime) -> bool:
    """Mark the row enqueued unless a task was enqueued after `not_enqueued_since`."""
    return bool(
        EntitlementSyncState.objects.filter(user_id=user_id)
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=not_enqueued_since))
        .update(enqueued_at=now)
    )


def _send_after_commit(
    *, user_id, trigger: str, queue: str | None, claimed_at: datetime, expires=None
) -> str:
    """Send the sync task once the current transaction commits; return its id."""
    task_id = str(uuid.uuid4())
    transaction.on_commit(
        partial(
            _send,
            user_id=user_id,
            trigger=trigger,
            queue=queue,
            task_id=task_id,
            claimed_at=claimed_at,
            expires=expires,
        )
    )
    return task_id


def _send(
    *, user_id, trigger: str, queue: str | None, task_id: str, claimed_at: datetime, expires
) -> None:
    """Put the sync task on the broker; on failure, log and leave the request to the sweep."""
    options = {"queue": queue} if queue else {}
    try:
        current_app.send_task(
            SYNC_USER_TASK,
            args=[str(user_id), trigger],
            task_id=task_id,
            expires=expires,
            retry=True,
            retry_policy=_PUBLISH_RETRY_POLICY,
            **options,
        )
    # Any failure to publish (broker down, timeout, bad broker URL) must leave the caller
    # unharmed: a login succeeds, the request is in the database for the sweep.
    except Exception as error:
        logger.warning(
            "entitlements sync task %s not enqueued (%s); the sweep will retry it",
            task_id,
            type(error).__name__,
        )
        sentry_sdk.capture_exception(error)
        EntitlementSyncState.objects.filter(user_id=user_id, enqueued_at=claimed_at).update(
            enqueued_at=None
        )


def _send_resync(task_name: str, *, args: list) -> str:
    """Send an admin-wide resync task; a person started it and is told when it failed."""
    try:
        return current_app.send_task(
            task_name, args=args, retry=True, retry_policy=_PUBLISH_RETRY_POLICY
        ).id
    except Exception as error:
        logger.warning("%s not enqueued (%s)", task_name, type(error).__name__)
        sentry_sdk.capture_exception(error)
        raise SyncNotEnqueuedError("the task broker cannot be reached; try again later") from error
