"""Change signals: DeployCenter's webhooks name an account or an organisation whose rights changed.

A signal is a hint, never an answer: it grants and revokes nothing by itself, it requests syncs
that ask the upstream. DeployCenter sends its webhook from inside the transaction of the change,
so the change may not be visible yet: a signal's sync asks after ENTITLEMENTS_CHANGE_SETTLE_SECONDS
and, when that answer changed nothing, once more ENTITLEMENTS_CHANGE_RECHECK_SECONDS later.
An account's signal syncs the local user with that e-mail; a subscription's signal runs a resync
of every local user whose stored siret claim is the organisation's (a run, with its revocation
budget). Repeated signals for a user or an organisation collapse while their sync is waiting,
and a user's signals inside the window of their settled sync (until its recheck is due) are
served by one sync at its end: at most two upstream calls per user for a bulk change shorter
than settle + recheck.
"""

import enum
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from core import metrics
from core.entitlements import fan_out
from core.entitlements.errors import EntitlementsError
from core.entitlements.receipts import RequestOutcome
from core.entitlements.results import SyncResult
from core.entitlements.runs import batch_expiry_seconds
from core.entitlements.sync_requests import request_organisation_resync, request_sync
from core.models import SyncRun, Trigger, User
from core.selectors import find_user, organisation_siret_of, users_of_organisation


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


def after_signal_sync(
    *, user_id: str, result: SyncResult, signalled_at: float | None, recheck: bool
) -> None:
    """Follow a change signal's sync of one user: time a change, or ask once more later.

    An answer that changed nothing may predate the change (DeployCenter had not committed it
    yet): the first sync of a signal (`recheck`) then requests one more, which does not.
    """
    if result.changed:
        if signalled_at is not None:
            metrics.change_applied(seconds=max(0.0, time.time() - signalled_at))
        return
    if recheck:
        request_sync(
            user=User(pk=user_id),
            trigger=Trigger.CHANGE_SIGNAL,
            delay_seconds=settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS,
            task_kwargs={"signalled_at": signalled_at},
        )


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
    """Request a settled sync of the local user the account names, if there is one."""
    if signal.account_email:
        user = find_user(email=signal.account_email)
    elif signal.account_external_id:
        user = User.objects.filter(sub=signal.account_external_id).first()
    else:
        user = None
    if user is None:
        return SignalReceipt(result=SignalResult.NO_USER)
    now = time.time()
    settle = settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS
    # A settled sync opens the user's window, until its recheck is due. Inside it, one sync at
    # the window's end (the recheck itself when one is waiting) serves every further signal:
    # a bulk change in DeployCenter shorter than the window costs at most two calls per user,
    # and a change signalled then still lands within settle + recheck.
    window_end = cache.get(_window_key(user.pk))
    in_window = window_end is not None and window_end > now
    request = request_sync(
        user=user,
        trigger=Trigger.CHANGE_SIGNAL,
        delay_seconds=max(settle, window_end - now) if in_window else settle,
        task_kwargs={"signalled_at": now, "recheck": not in_window},
    )
    if request.outcome is RequestOutcome.COLLAPSED:
        return SignalReceipt(result=SignalResult.COLLAPSED, users=1)
    if not in_window:
        window = settle + settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS
        cache.set(_window_key(user.pk), now + window, timeout=math.ceil(window))
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


def _window_key(user_id) -> str:
    """The cache key of a user's recheck window: when it ends (epoch seconds)."""
    return f"change-signal:window:{user_id}"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]
