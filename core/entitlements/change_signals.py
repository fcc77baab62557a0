"""Change signals: DeployCenter's webhooks name an account or an organisation whose rights changed.

A signal is a hint, never an answer: it grants and revokes nothing by itself, it requests syncs
that ask the upstream. DeployCenter sends its webhook from inside the transaction of the change,
so the change may not be visible yet: a signal's sync asks after ENTITLEMENTS_CHANGE_SETTLE_SECONDS
and, when that answer changed nothing, once more ENTITLEMENTS_CHANGE_RECHECK_SECONDS later.
An account's signal syncs the local user with that e-mail; a subscription's signal runs a resync
of every local user whose stored siret claim is the organisation's (a run, with its revocation
budget). A user's signals join a round of two asks, a settled sync and a recheck that waits for
the signals to pause (core/entitlements/signal_rounds.py): two upstream calls per user for a
bulk change. An organisation's signals collapse while its run is waiting.
"""

import enum
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sentry_sdk
from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from core import metrics
from core.entitlements import fan_out, signal_rounds
from core.entitlements.errors import EntitlementsError
from core.entitlements.receipts import RequestOutcome
from core.entitlements.results import SyncResult
from core.entitlements.runs import batch_expiry_seconds
from core.entitlements.sync_requests import request_organisation_resync, request_sync
from core.models import FAILED_SYNC_STATUSES, EntitlementSyncState, SyncRun, Trigger, User
from core.selectors import find_user_id, organisation_siret_of, users_of_organisation
from core.task_names import TaskName

logger = logging.getLogger(__name__)
SyncState = EntitlementSyncState.Status


class ChangeEvent(enum.StrEnum):
    """The webhook events of DeployCenter a signal may carry (its `event_type`)."""

    ACCOUNT_UPDATED = "account.updated"
    SUBSCRIPTION_CREATED = "subscription.created"
    SUBSCRIPTION_UPDATED = "subscription.updated"
    SUBSCRIPTION_DELETED = "subscription.deleted"


# The key of the webhook's context each event cannot do without (its value may be null).
_NEEDED_KEY = {
    ChangeEvent.ACCOUNT_UPDATED: "account_email",
    ChangeEvent.SUBSCRIPTION_CREATED: "organization_siret",
    ChangeEvent.SUBSCRIPTION_UPDATED: "organization_siret",
    ChangeEvent.SUBSCRIPTION_DELETED: "organization_siret",
}
_TEXT_KEYS = ("account_email", "account_external_id", "organization_siret")
# A webhook body carries a few keys; a template that sends the organisation's whole roles
# context can grow large, and nothing in it is needed here.
MAX_BODY_BYTES = 64 * 1024


class InvalidChangeSignal(EntitlementsError):
    """A body that is not a change signal; the message says why, and quotes no value."""


class SignalResult(enum.StrEnum):
    """What a signal requested (the `result` label of the signals metric)."""

    REQUESTED = "requested"
    # A sync (or organisation run) requested moments ago and not due yet serves it.
    COLLAPSED = "collapsed"
    NO_USER = "no_user"
    # An organisation's run could not be queued: the broker is down.
    NOT_SENT = "not_sent"


@dataclass(frozen=True, slots=True)
class ChangeSignal:
    """A valid signal: its event and the keys that name whom it concerns (null when absent)."""

    event: ChangeEvent
    account_email: str | None = None
    account_external_id: str | None = None
    organization_siret: str | None = None


@dataclass(frozen=True, slots=True)
class SignalReceipt:
    """What a signal requested: users' syncs, or the run of an organisation (queued, collapsed)."""

    result: SignalResult
    users: int = 0
    organisation_run: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The endpoint's 202 body."""
        return {"users": self.users, "organisation_run": self.organisation_run}


def deploycenter_webhook(*, url: str, token: str) -> dict[str, Any]:
    """The entry of the Messages service's `webhooks` config in DeployCenter that sends its
    change events here (docs/entitlements.md, "The service config to put in DeployCenter")."""
    return {
        "url": url,
        "method": "POST",
        "event_types": list(ChangeEvent),
        "headers": {"Authorization": f"Bearer {token}"},
        "body": {
            key: {"$val": key}
            for key in (
                "event_type",
                "timestamp",
                "organization_siret",
                "subscription_is_active",
                "account_email",
                "account_external_id",
            )
        },
        "timeout": 10,
    }


def parse_change_signal(payload: Any) -> ChangeSignal:
    """Check a decoded webhook body; InvalidChangeSignal says what is wrong.

    An object with a known `event_type` and the key its event needs; unknown keys are
    ignored, and the keys read may be null.
    """
    if not isinstance(payload, dict):
        raise InvalidChangeSignal("The body must be a JSON object.")
    if "event_type" not in payload:
        raise InvalidChangeSignal("event_type is required.")
    try:
        event = ChangeEvent(payload["event_type"])
    except ValueError:
        raise InvalidChangeSignal(f"event_type must be one of: {', '.join(ChangeEvent)}.") from None
    needed = _NEEDED_KEY[event]
    if needed not in payload:
        raise InvalidChangeSignal(f"{needed} is required for {event} (null is accepted).")
    for key in _TEXT_KEYS:
        if not isinstance(payload.get(key), str | None):
            raise InvalidChangeSignal(f"{key} must be a string or null.")
    return ChangeSignal(event=event, **{key: payload.get(key) or None for key in _TEXT_KEYS})


def receive_change_signal(*, signal: ChangeSignal) -> SignalReceipt:
    """Request the syncs a valid signal calls for; a constant number of queries.

    A user's task is sent once the caller's transaction commits (if the broker is down, the
    request stays recorded for the sweep); an organisation's at once (NOT_SENT when the
    broker is down: nothing is recorded).
    """
    if signal.event is ChangeEvent.ACCOUNT_UPDATED:
        receipt = _signal_account(signal)
    else:
        receipt = _signal_organisation(signal)
    metrics.change_signal_received(event_type=signal.event, result=receipt.result)
    return receipt


def record_invalid_signal() -> None:
    """Count a body refused as no change signal (its event type is not trusted)."""
    metrics.change_signal_received(event_type=metrics.OTHER, result="invalid")


def record_refused_signal() -> None:
    """Count a request refused for its token."""
    metrics.change_signal_received(event_type=metrics.OTHER, result="refused")


def signal_sync_starting(*, user_id: str) -> tuple[signal_rounds.Phase, float]:
    """Which of its round's asks a change signal's sync is about to make, and the seconds it
    must wait first (a recheck waits for the user's signals to pause; 0: ask now).

    Read from the round, not from the task: a sync the sweep sent, or one a signal's request
    collapsed into, serves whichever ask the round is waiting for.
    """
    now = time.time()
    if signal_rounds.recheck_is_next(user_id=user_id):
        return signal_rounds.Phase.RECHECK, signal_rounds.recheck_starting(user_id=user_id, now=now)
    signal_rounds.settled_ask_starting(user_id=user_id, now=now)
    return signal_rounds.Phase.SETTLE, 0.0


def postpone_signal_sync(*, user_id: str, seconds: float, task_kwargs: dict) -> None:
    """Send a recheck again, due in `seconds` (the user's signals have not paused yet).

    Its row records the new due time, so the sweep leaves it alone until then; if the broker
    cannot be reached, the request recorded on the row is the sweep's to send.
    """
    due = timezone.now() + timedelta(seconds=seconds)
    EntitlementSyncState.objects.filter(user_id=user_id).update(enqueued_at=due)
    try:
        current_app.send_task(
            TaskName.SYNC_USER,
            args=[str(user_id), Trigger.CHANGE_SIGNAL],
            kwargs=task_kwargs,
            countdown=seconds,
        )
    except Exception as error:
        logger.warning("recheck of user %s not enqueued (%s)", user_id, type(error).__name__)
        sentry_sdk.capture_exception(error)


def after_signal_sync(
    *,
    user_id: str,
    result: SyncResult,
    signalled_at: float | None,
    phase: signal_rounds.Phase,
    asked_at: float,
) -> None:
    """Follow a change signal's sync of one user: time a change, request its round's next ask.

    A sync that could not ask (the upstream down, the user's lock held through every retry)
    ends its round and requests nothing: it did not ask, so no later sync can stand for its
    recheck. The user's request stays recorded on their row for the sweep (a lock held) or the
    periodic run (the upstream down), and the user's next signal opens a new round.
    """
    if result.changed and signalled_at is not None:
        metrics.change_applied(seconds=max(0.0, time.time() - signalled_at))
    now = time.time()
    if result.status in FAILED_SYNC_STATUSES or result.status == SyncState.SKIPPED:
        signal_rounds.end_without_ask(user_id=user_id)
        return
    if phase is signal_rounds.Phase.SETTLE:
        plan = signal_rounds.settled_ask_ended(
            user_id=user_id, asked_at=asked_at, changed=result.changed, now=now
        )
    else:
        plan = signal_rounds.recheck_ended(user_id=user_id, asked_at=asked_at, now=now)
    if plan is None:
        return
    request = request_sync(
        user=User(pk=user_id),
        trigger=Trigger.CHANGE_SIGNAL,
        delay_seconds=plan.delay_seconds,
        task_kwargs={"signalled_at": signalled_at, "signal_phase": plan.phase},
    )
    if request.outcome is RequestOutcome.NOT_SENT:
        signal_rounds.abandon(user_id=user_id)


class RecheckDecision(enum.StrEnum):
    """What an organisation's recheck does once the signal's first run is known."""

    RUN = "run"
    # The first run changed someone's rights: it saw the change.
    NOT_NEEDED = "not_needed"
    # The first run is still running: look again later.
    WAIT = "wait"


def organisation_recheck(*, run_id: int) -> RecheckDecision:
    """Whether an organisation's signal needs its second run, given its first run."""
    run = SyncRun.objects.filter(pk=run_id).first()
    if run is None:
        return RecheckDecision.RUN
    if run.status == SyncRun.Status.RUNNING:
        expired = (timezone.now() - run.started_at).total_seconds() > batch_expiry_seconds()
        return RecheckDecision.RUN if expired else RecheckDecision.WAIT
    return RecheckDecision.NOT_NEEDED if run.users_changed else RecheckDecision.RUN


def run_organisation_resync(
    *, user_id: str, trigger: Trigger, task_id: str, on_progress=lambda meta: None
) -> dict:
    """Run the resync of the organisation whose siret claim `user_id` carries (its task's)."""
    siret = organisation_siret_of(user_id=user_id)
    if not siret:
        return {"run_status": SyncRun.Status.SKIPPED, "reason": "unknown_organisation"}
    return fan_out.run_organisation_resync(
        siret=siret,
        scope_key=organisation_scope_key(siret),
        trigger=trigger,
        task_id=task_id,
        on_progress=on_progress,
    )


def organisation_scope_key(siret: str) -> str:
    """The run lock's key of an organisation: a digest, so no siret is written in Redis."""
    return f"organisation:{_digest(siret)}"


def _signal_account(signal: ChangeSignal) -> SignalReceipt:
    """Join the user's round of signals, or open one and request its settled sync.

    A signal that joins a round costs a lookup and two cache writes: no database write.
    """
    if signal.account_email:
        user_id = find_user_id(email=signal.account_email)
    elif signal.account_external_id:
        user_id = (
            User.objects.filter(sub=signal.account_external_id).values_list("pk", flat=True).first()
        )
    else:
        user_id = None
    if user_id is None:
        return SignalReceipt(result=SignalResult.NO_USER)
    now = time.time()
    if not signal_rounds.join_or_open(user_id=user_id, now=now):
        return SignalReceipt(result=SignalResult.COLLAPSED, users=1)
    request = request_sync(
        user=User(pk=user_id),
        trigger=Trigger.CHANGE_SIGNAL,
        delay_seconds=settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS,
        task_kwargs={"signalled_at": now, "signal_phase": signal_rounds.Phase.SETTLE},
    )
    if request.outcome is RequestOutcome.COLLAPSED:
        # A change signal's sync not due yet (one the sweep sent) serves as the round's.
        return SignalReceipt(result=SignalResult.COLLAPSED, users=1)
    return SignalReceipt(result=SignalResult.REQUESTED, users=1)


def _signal_organisation(signal: ChangeSignal) -> SignalReceipt:
    """Request a settled run over the organisation's users; its fan-out happens in the task.

    The task is given one of the organisation's users (ids only go to the broker) and finds
    the others by that user's stored siret claim.
    """
    if not signal.organization_siret:
        return SignalReceipt(result=SignalResult.NO_USER)
    anchor = users_of_organisation(siret=signal.organization_siret).first()
    if anchor is None:
        return SignalReceipt(result=SignalResult.NO_USER)
    settle = settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS
    # One run per organisation until it is due: the signals of a bulk change collapse.
    pending_key = f"change-signal:{organisation_scope_key(signal.organization_siret)}"
    if not cache.add(pending_key, 1, timeout=max(1, math.ceil(settle))):
        return SignalReceipt(result=SignalResult.COLLAPSED, organisation_run="collapsed")
    receipt = request_organisation_resync(
        user_id=anchor, trigger=Trigger.CHANGE_SIGNAL, delay_seconds=settle
    )
    if not receipt.sent:
        # Nothing is pending: the next signal must not collapse into it.
        cache.delete(pending_key)
        return SignalReceipt(result=SignalResult.NOT_SENT, organisation_run="not_sent")
    return SignalReceipt(result=SignalResult.REQUESTED, organisation_run="queued")


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]
