"""Requesting a sync: the one way in for a login, the admin, the command line and the sweep.

A request is recorded on the user's sync state row first, then its task is sent once the
transaction commits. A broker that cannot be reached loses nothing: the sweep
(`enqueue_outstanding_requests`) sends whatever is recorded and was never served.
"""

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache, partial
from typing import Any

import sentry_sdk
from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, Q, QuerySet, Value, When
from django.utils import timezone

from core.compiled_updates import CompiledUpdate, Param, model_field
from core.entitlements.factory import forwarded_claims
from core.entitlements.receipts import RequestOutcome, SyncReceipt
from core.models import EntitlementSyncState, MailDomain, Trigger, User
from core.querysets import no_task_waiting
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
    delay_seconds: float = 0.0,
    task_kwargs: dict | None = None,
) -> SyncReceipt:
    """Record that the user's entitlements need a sync and enqueue its task after commit.

    A request collapses into the user's task queued less than ENTITLEMENTS_SYNC_DEDUP_SECONDS
    ago only while no sync has started since that task was queued: a request made once a sync
    started gets a task of its own, whose sync starts after it. A login passes its
    `login_claims`: the ones the backend forwards are stored on the way (same statement),
    never tokens. Never raises for a broker that cannot be reached: the request stays
    recorded, the outcome says NOT_SENT (in autocommit at once, else once the transaction
    commits), and `enqueue_outstanding_requests` (the sweep) sends it later.

    A change signal passes `delay_seconds`: its task starts no sooner (its row records when
    it is due); it collapses only into a waiting task of the same trigger, and a request with
    no delay never waits for another trigger's task not due yet. `task_kwargs` are the sync
    task's extra keyword arguments (numbers and flags only: the broker and Flower show them).
    """
    now = timezone.now()
    fields = {"requested_at": now, "last_trigger": trigger}
    if login_claims is not None:
        fields["forwarded_claims"] = forwarded_claims(login_claims)
    not_enqueued_since = now - timedelta(seconds=settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS)
    due_at = now + timedelta(seconds=delay_seconds)
    with _commits_not_waiting_for_the_disk():
        claimed = _record_and_claim(
            user_id=user.pk,
            fields=fields,
            now=now,
            due_at=due_at,
            not_enqueued_since=not_enqueued_since,
        )
    if not claimed:
        return SyncReceipt(user_id=user.pk, outcome=RequestOutcome.COLLAPSED)
    request = SyncReceipt(user_id=user.pk, outcome=RequestOutcome.QUEUED, task_id=str(uuid.uuid4()))
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


def request_resync(*, trigger: Trigger, maildomain: MailDomain | None = None) -> SyncReceipt:
    """Start a resync run of every admin, or of one domain's admins; a person is waiting.

    Sends entitlements.sync_all_admins (sync_domain_admins with `maildomain`) now, whatever
    the transaction: NOT_SENT when the broker cannot be reached, and nothing is recorded
    for the sweep (the person tries again).
    """
    if maildomain is None:
        return _send_run(TaskName.SYNC_ALL_ADMINS, args=[trigger])
    return _send_run(
        TaskName.SYNC_DOMAIN_ADMINS,
        args=[str(maildomain.pk), trigger],
        maildomain_name=maildomain.name,
    )


def request_organisation_resync(
    *, user_id: uuid.UUID, trigger: Trigger, delay_seconds: float
) -> SyncReceipt:
    """Start, after `delay_seconds`, a resync run of the users who share the stored siret
    claim of `user_id` (entitlements.sync_organisation_admins): a change signal's.

    Sent now, whatever the transaction: NOT_SENT when the broker cannot be reached.
    """
    return _send_run(
        TaskName.SYNC_ORGANISATION_ADMINS, args=[str(user_id), trigger], countdown=delay_seconds
    )


def _send_run(
    task_name: str, *, args: list, maildomain_name: str = "", countdown: float | None = None
) -> SyncReceipt:
    """Send a resync run's task; its receipt says NOT_SENT when the broker is unreachable."""
    try:
        task_id = current_app.send_task(
            task_name,
            args=args,
            countdown=countdown,
            retry=True,
            retry_policy=_PUBLISH_RETRY_POLICY,
        ).id
    except Exception as error:
        logger.warning("%s not enqueued (%s)", task_name, type(error).__name__)
        sentry_sdk.capture_exception(error)
        return SyncReceipt(outcome=RequestOutcome.NOT_SENT, maildomain_name=maildomain_name)
    return SyncReceipt(
        outcome=RequestOutcome.QUEUED, task_id=task_id, maildomain_name=maildomain_name
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


@contextmanager
def _commits_not_waiting_for_the_disk() -> Iterator[None]:
    """In autocommit on PostgreSQL, the statements of the block commit without waiting for
    their WAL to reach the disk (`synchronous_commit` off for their own transactions only).

    That wait was most of a login's request: 0.7-3 ms of fsync at p50 here, tens of ms at
    p99 on a busy disk, for one row (docs/performance.md, figure 14). The commit is as
    visible at once as before, and durable within ~0.6 s (3 x wal_writer_delay); a
    PostgreSQL crash inside that window can lose the request, no more: the task it sends
    lives in Redis, which keeps it no better (its append-only file, when on, is flushed
    once a second), and a later login or run syncs the user anyway. Inside a caller's transaction
    (atomic) nothing changes: its commit is the caller's.

    The setting rides in the statement's own query string (`; SET LOCAL ...` after it, one
    implicit transaction, one round trip); the cursor's row count stays the statement's.
    Server-side binding cannot send two statements at once: it keeps the synchronous commit.
    """
    if (
        connection.vendor != "postgresql"
        or connection.in_atomic_block
        or not connection.get_autocommit()
        or connection.settings_dict["OPTIONS"].get("server_side_binding")
    ):
        yield
        return
    with connection.execute_wrapper(_commit_without_waiting_for_the_disk):
        yield


def _commit_without_waiting_for_the_disk(execute, sql, params, many, context):
    if many:
        return execute(sql, params, many, context)
    return execute(f"{sql}; SET LOCAL synchronous_commit TO OFF", params, many, context)


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
    `enqueued_at` holds when the task is due (`due_at`: now, unless the request is delayed).
    The database serialises concurrent requests on the row, so exactly one of them claims, in
    any process.
    """
    stores_claims = "forwarded_claims" in fields
    claiming = _claiming_update(stores_claims=stores_claims, due_now=due_at <= now)
    values = {"user_id": user_id, "now": now, **fields}
    if claiming.run(**values, due_at=due_at, not_enqueued_since=not_enqueued_since):
        return True
    if _recording_update(stores_claims=stores_claims).run(**values):
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


# The request's UPDATEs are built by the ORM once per process (`core.compiled_updates`): the
# statement of a login is the same at every login, and building it cost ~0.75 ms of CPU, more
# than its round trip to PostgreSQL. One statement per shape of request: with or without
# claims to store, due now or delayed.


def _param(name: str, field_name: str | None = None) -> Param:
    """A value of the request's UPDATE, prepared as the sync state's field `field_name`."""
    return Param(name, output_field=model_field(EntitlementSyncState, field_name or name))


def _recorded(*, stores_claims: bool) -> dict[str, Any]:
    """What every request writes on its row: the keyword arguments of `.update()`."""
    changes: dict[str, Any] = {
        "status": _PENDING_IF_NEVER,
        "requested_at": _param("now", "requested_at"),
        "last_trigger": _param("last_trigger"),
    }
    if stores_claims:
        changes["forwarded_claims"] = _param("forwarded_claims")
    return changes


@cache
def _claiming_update(*, stores_claims: bool, due_now: bool) -> CompiledUpdate:
    """Record the request and claim the enqueue, unless a task is waiting (the usual case)."""

    def build() -> tuple[QuerySet, dict[str, Any]]:
        trigger = _param("last_trigger")
        # A delayed request does not collapse into another trigger's task (it would run
        # without the delay); a request due now does not wait for another trigger's task not
        # due yet.
        other_triggers_task = ~Q(last_trigger=trigger)
        if due_now:
            other_triggers_task &= Q(enqueued_at__gt=_param("now", "enqueued_at"))
        queued_since = _param("not_enqueued_since", "enqueued_at")
        claimable = no_task_waiting(queued_since=queued_since) | other_triggers_task
        states = EntitlementSyncState.objects.filter(user_id=_param("user_id", "user"))
        changes = {
            "enqueued_at": _param("due_at", "enqueued_at"),
            **_recorded(stores_claims=stores_claims),
        }
        return states.filter(claimable), changes

    return CompiledUpdate(EntitlementSyncState, build)


@cache
def _recording_update(*, stores_claims: bool) -> CompiledUpdate:
    """Record the request only: it collapses into the task waiting."""

    def build() -> tuple[QuerySet, dict[str, Any]]:
        states = EntitlementSyncState.objects.filter(user_id=_param("user_id", "user"))
        return states, _recorded(stores_claims=stores_claims)

    return CompiledUpdate(EntitlementSyncState, build)


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
    countdown: float | None = None,
    kwargs: dict | None = None,
) -> None:
    """Put the sync task on the broker; on failure, log and leave the request to the sweep."""
    assert request.user_id is not None, "a user's sync request names its user"
    options: dict[str, Any] = {"queue": queue} if queue else {}
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
