"""Requesting a sync: the one way in for a login, the admin, the command line and the sweep.

A request is recorded on the user's sync state row first, then its task is sent once the
transaction commits. A broker that cannot be reached loses nothing: the sweep
(`enqueue_outstanding_requests`) sends whatever is recorded and was never served.
"""

import logging
import uuid
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import sentry_sdk
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from core.entitlements.factory import forwarded_claims
from core.entitlements.receipts import RequestOutcome, SyncReceipt
from core.models import EntitlementSyncState, MailDomain, Trigger, User
from core.selectors import outstanding_requests
from core.task_names import TaskName

logger = logging.getLogger(__name__)


# One quick reconnection attempt, then give up: a login must not hang on a dead broker, and
# the sweep enqueues whatever could not be sent.
_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0}


def request_sync(
    *,
    user: User,
    trigger: Trigger,
    queue: str | None = None,
    login_claims: dict | None = None,
) -> SyncReceipt:
    """Record that the user's entitlements need a sync and enqueue its task after commit.

    A request collapses into the user's task queued less than ENTITLEMENTS_SYNC_DEDUP_SECONDS
    ago only while no sync has started since that task was queued: a request made once a sync
    started gets a task of its own, whose sync starts after it. A login passes its
    `login_claims`: the ones the backend forwards are stored on the way (same statement),
    never tokens. Never raises for a broker that cannot be reached: the request stays
    recorded, the outcome says NOT_SENT (in autocommit at once, else once the transaction
    commits), and `enqueue_outstanding_requests` (the sweep) sends it later.
    """
    now = timezone.now()
    fields = {"requested_at": now, "last_trigger": trigger}
    if login_claims is not None:
        fields["forwarded_claims"] = forwarded_claims(login_claims)
    not_enqueued_since = now - timedelta(seconds=settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS)
    if not _record_and_claim(
        user_id=user.pk, fields=fields, now=now, not_enqueued_since=not_enqueued_since
    ):
        return SyncReceipt(user_id=user.pk, outcome=RequestOutcome.COLLAPSED)
    request = SyncReceipt(user_id=user.pk, outcome=RequestOutcome.QUEUED, task_id=str(uuid.uuid4()))
    transaction.on_commit(
        partial(_send, request=request, trigger=trigger, queue=queue, claimed_at=now)
    )
    return request


def request_resync(*, trigger: Trigger, maildomain: MailDomain | None = None) -> SyncReceipt:
    """Start a resync run of every admin, or of one domain's admins; a person is waiting.

    Sends entitlements.sync_all_admins (sync_domain_admins with `maildomain`) now, whatever
    the transaction: NOT_SENT when the broker cannot be reached, and nothing is recorded
    for the sweep (the person tries again).
    """
    args: list[str]
    if maildomain is None:
        task_name, args, name = TaskName.SYNC_ALL_ADMINS, [trigger], ""
    else:
        task_name, args = TaskName.SYNC_DOMAIN_ADMINS, [str(maildomain.pk), trigger]
        name = maildomain.name
    try:
        task_id = current_app.send_task(
            task_name, args=args, retry=True, retry_policy=_PUBLISH_RETRY_POLICY
        ).id
    except Exception as error:
        logger.warning("%s not enqueued (%s)", task_name, type(error).__name__)
        sentry_sdk.capture_exception(error)
        return SyncReceipt(outcome=RequestOutcome.NOT_SENT, maildomain_name=name)
    return SyncReceipt(outcome=RequestOutcome.QUEUED, task_id=task_id, maildomain_name=name)


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
        request = SyncReceipt(
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
    *, user_id, fields: dict, now: datetime, not_enqueued_since: datetime
) -> bool:
    """Write the request on the user's bookkeeping row; True when this call must enqueue.

    The usual case is one UPDATE: it records the request and claims the enqueue at once,
    unless a task enqueued after `not_enqueued_since` has not started yet (no sync started
    since it was enqueued): only such a task is sure to read the upstream after this request.
    The database serialises concurrent requests on the row, so exactly one of them claims, in
    any process.
    """
    states = EntitlementSyncState.objects.filter(user_id=user_id)
    no_task_waiting = states.without_task_waiting(queued_since=not_enqueued_since)
    if no_task_waiting.update(enqueued_at=now, status=_PENDING_IF_NEVER, **fields):
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


def _send(
    *,
    request: SyncReceipt,
    trigger: str,
    queue: str | None,
    claimed_at: datetime,
    expires: float | None = None,
) -> None:
    """Put the sync task on the broker; on failure, log and leave the request to the sweep."""
    assert request.user_id is not None, "a user's sync request names its user"
    options: dict[str, Any] = {"queue": queue} if queue else {}
    try:
        current_app.send_task(
            TaskName.SYNC_USER,
            args=[str(request.user_id), trigger],
            task_id=request.task_id,
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
            request.task_id,
            type(error).__name__,
        )
        sentry_sdk.capture_exception(error)
        EntitlementSyncState.objects.filter(user_id=request.user_id, enqueued_at=claimed_at).update(
            enqueued_at=None
        )
        request.outcome = RequestOutcome.NOT_SENT
