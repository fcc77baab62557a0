"""Requesting a sync: the one door for a login, the admin, the command line and the sweep.

A request is recorded on the user's sync state row first, then its task is sent once the
transaction commits. A broker that cannot be reached loses nothing: the sweep
(`enqueue_outstanding_requests`) sends whatever is recorded and was never served.
"""

import enum
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

import sentry_sdk
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from core.models import EntitlementSyncState, MailDomain, Trigger, User
from core.selectors import outstanding_requests
from core.task_names import TaskName

logger = logging.getLogger(__name__)


class SyncNotEnqueuedError(Exception):
    """The broker could not be reached: the resync was not started."""


class RequestOutcome(enum.StrEnum):
    """What became of one sync request."""

    # A task of its own carries it (sent, or sent when the transaction commits).
    QUEUED = "queued"
    # A task queued moments ago for the same user, not started yet, serves it.
    COLLAPSED = "collapsed"
    # The broker could not be reached: recorded, the sweep sends it later.
    NOT_SENT = "not_sent"


@dataclass(slots=True)
class SyncRequest:
    """The answer of request_sync; final once the caller's transaction has committed."""

    user_id: uuid.UUID
    outcome: RequestOutcome
    task_id: str | None = None


# One quick reconnection attempt, then give up: a login must not hang on a dead broker, and
# the sweep enqueues whatever could not be sent.
_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0}


def request_sync(
    *,
    user: User,
    trigger: Trigger,
    queue: str | None = None,
    forwarded_claims: dict | None = None,
    delay_seconds: float = 0.0,
    task_kwargs: dict | None = None,
) -> SyncRequest:
    """Record that the user's entitlements need a sync and enqueue its task after commit.

    A request collapses into the user's task queued less than ENTITLEMENTS_SYNC_DEDUP_SECONDS
    ago only while no sync has started since that task was queued: a request made once a sync
    started gets a task of its own, whose sync starts after it. A login passes the
    `forwarded_claims` it stores on the way (same statement). Never raises for a broker that
    cannot be reached: the request stays recorded, the outcome says NOT_SENT (in autocommit at
    once, else once the transaction commits), and `enqueue_outstanding_requests` (the sweep)
    sends it later.

    A change signal passes `delay_seconds`: its task starts no sooner (its row records when
    it is due); it collapses only into a waiting task of the same trigger, and a request with
    no delay never waits for a task not due yet. `task_kwargs` are the sync task's extra
    keyword arguments (numbers and flags only: the broker and Flower show them).
    """
    now = timezone.now()
    fields = {"requested_at": now, "last_trigger": trigger}
    if forwarded_claims is not None:
        fields["forwarded_claims"] = forwarded_claims
    not_enqueued_since = now - timedelta(seconds=settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS)
    due_at = now + timedelta(seconds=delay_seconds)
    if not _record_and_claim(
        user_id=user.pk,
        fields=fields,
        now=now,
        due_at=due_at,
        not_enqueued_since=not_enqueued_since,
    ):
        return SyncRequest(user_id=user.pk, outcome=RequestOutcome.COLLAPSED)
    request = SyncRequest(user_id=user.pk, outcome=RequestOutcome.QUEUED, task_id=str(uuid.uuid4()))
    transaction.on_commit(
        partial(
            _send,
            request=request,
            trigger=trigger,
            queue=queue,
            claimed_at=due_at,
            countdown=delay_seconds or None,
            kwargs=task_kwargs,
        )
    )
    return request


def request_full_resync(*, trigger: Trigger) -> str:
    """Start a resync of every admin (entitlements.sync_all_admins); return its task id.

    Raises SyncNotEnqueuedError when the broker cannot be reached.
    """
    return _send_resync(TaskName.SYNC_ALL_ADMINS, args=[trigger])


def request_domain_resync(*, maildomain: MailDomain, trigger: Trigger) -> str:
    """Start a resync of one domain's admins (entitlements.sync_domain_admins); return its id.

    Raises SyncNotEnqueuedError when the broker cannot be reached.
    """
    return _send_resync(TaskName.SYNC_DOMAIN_ADMINS, args=[str(maildomain.pk), trigger])


def request_organisation_resync(
    *, user_id: uuid.UUID, trigger: Trigger, delay_seconds: float
) -> str:
    """Start, after `delay_seconds`, a resync of the users who share the stored siret claim of
    `user_id` (entitlements.sync_organisation_admins); return its task id.

    Raises SyncNotEnqueuedError when the broker cannot be reached.
    """
    return _send_resync(
        TaskName.SYNC_ORGANISATION_ADMINS, args=[str(user_id), trigger], countdown=delay_seconds
    )


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
        request = SyncRequest(
            user_id=user_id, outcome=RequestOutcome.QUEUED, task_id=str(uuid.uuid4())
        )
        transaction.on_commit(
            partial(
                _send,
                request=request,
                trigger=trigger or Trigger.SWEEP,
                queue=None,
                claimed_at=now,
                # A copy still queued when the next sweep sends another is useless: drop it.
                expires=grace.total_seconds(),
            )
        )
        sent += 1
    return sent


# A row's first request turns "never synced" into "pending"; later ones keep the last outcome.
_PENDING_IF_NEVER = Case(
    When(
        status=EntitlementSyncState.Status.NEVER,
        then=Value(EntitlementSyncState.Status.PENDING),
    ),
    default=F("status"),
)


def _record_and_claim(
    *, user_id, fields: dict, now: datetime, due_at: datetime, not_enqueued_since: datetime
) -> bool:
    """Write the request on the user's bookkeeping row; True when this call must enqueue.

    The usual case is one UPDATE: it records the request and claims the enqueue at once,
    unless a task enqueued after `not_enqueued_since` has not started yet (no sync started
    since it was enqueued): only such a task is sure to read the upstream after this request.
    `enqueued_at` holds when the task is due (`due_at`: now, unless the request is delayed);
    a delayed request collapses only into a waiting task of its own trigger, and a request due
    now not into another trigger's task that is not due yet.
    The database serialises concurrent requests on the row, so exactly one of them claims, in
    any process.
    """
    states = EntitlementSyncState.objects.filter(user_id=user_id)
    no_task_waiting = (
        Q(enqueued_at__isnull=True)
        | Q(enqueued_at__lt=not_enqueued_since)
        | Q(started_at__gte=F("enqueued_at"))
        # A delayed request does not collapse into another trigger's task (it would run
        # without the delay); a request due now does not wait for another trigger's task not
        # due yet.
        | (
            ~Q(last_trigger=fields["last_trigger"])
            & (Q() if due_at > now else Q(enqueued_at__gt=now))
        )
    )
    if states.filter(no_task_waiting).update(
        enqueued_at=due_at, status=_PENDING_IF_NEVER, **fields
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
        user_id=user_id,
        fields=fields,
        now=now,
        due_at=due_at,
        not_enqueued_since=not_enqueued_since,
    )


def _claim(*, user_id, now: datetime, not_enqueued_since: datetime) -> bool:
    """Mark the row enqueued unless a task was enqueued after `not_enqueued_since`."""
    return bool(
        EntitlementSyncState.objects.filter(user_id=user_id)
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=not_enqueued_since))
        .update(enqueued_at=now)
    )


def _send(
    *,
    request: SyncRequest,
    trigger: str,
    queue: str | None,
    claimed_at: datetime,
    expires: float | None = None,
    countdown: float | None = None,
    kwargs: dict | None = None,
) -> None:
    """Put the sync task on the broker; on failure, log and leave the request to the sweep."""
    options = {"queue": queue} if queue else {}
    try:
        current_app.send_task(
            TaskName.SYNC_USER,
            args=[str(request.user_id), trigger],
            kwargs=kwargs,
            task_id=request.task_id,
            expires=expires,
            countdown=countdown,
            retry=True,
            retry_policy=_PUBLISH_RETRY_POLICY,
            **options,
        )
    # Any failure to publish (broker down, timeout, bad broker URL) must leave the caller
    # unharmed: a login succeeds, the request is in the database for the sweep.
    except Exception as error:
        logger.warning(
            "entitlements sync task %s not enqueued (%s); the sweep will retry it",
            request.task_id,
            type(error).__name__,
        )
        sentry_sdk.capture_exception(error)
        EntitlementSyncState.objects.filter(user_id=request.user_id, enqueued_at=claimed_at).update(
            enqueued_at=None
        )
        request.outcome = RequestOutcome.NOT_SENT


def _send_resync(task_name: str, *, args: list, countdown: float | None = None) -> str:
    """Send a resync run's task; its sender is told when it failed."""
    try:
        return current_app.send_task(
            task_name,
            args=args,
            countdown=countdown,
            retry=True,
            retry_policy=_PUBLISH_RETRY_POLICY,
        ).id
    except Exception as error:
        logger.warning("%s not enqueued (%s)", task_name, type(error).__name__)
        sentry_sdk.capture_exception(error)
        raise SyncNotEnqueuedError("the task broker cannot be reached; try again later") from error
