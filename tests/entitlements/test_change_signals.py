"""The change-signal service: a signal's sync asks once more only when it changed nothing, and
an organisation's second run waits for its first and is skipped when that one changed rights."""

import time
from datetime import timedelta

from django.db.models import F
from django.utils import timezone

from core import metrics
from core.entitlements.change_signals import (
    ChangeEvent,
    ChangeSignal,
    RecheckDecision,
    after_signal_sync,
    organisation_recheck,
    receive_change_signal,
)
from core.entitlements.results import SyncResult
from core.models import EntitlementSyncState, SyncRun


def result(user, **changes) -> SyncResult:
    return SyncResult(user_id=str(user.pk), trigger="change_signal", status="ok", **changes)


def test_an_unchanged_first_sync_asks_once_more_after_the_recheck_delay(
    transactional_db, settings, make_user, broker_queues
):
    settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS = 20.0
    user = make_user()
    EntitlementSyncState.objects.create(user=user)

    after_signal_sync(user_id=str(user.pk), result=result(user), signalled_at=1.0, recheck=True)

    [message] = broker_queues.messages("signals")
    assert message["args"] == [str(user.pk), "change_signal"]
    state = EntitlementSyncState.objects.get(user=user)
    assert 19 <= (state.enqueued_at - state.requested_at).total_seconds() <= 21


def test_the_recheck_itself_and_a_changing_sync_ask_no_more(
    transactional_db, make_user, broker_queues
):
    user = make_user()
    before = metrics.CHANGE_TO_RIGHTS._sum.get()

    after_signal_sync(user_id=str(user.pk), result=result(user), signalled_at=1.0, recheck=False)
    after_signal_sync(
        user_id=str(user.pk),
        result=result(user, added=["alpha.example.org"]),
        signalled_at=None,
        recheck=True,
    )

    assert broker_queues.length("signals") == 0
    assert metrics.CHANGE_TO_RIGHTS._sum.get() == before


def test_a_changing_sync_records_its_change_to_rights_time(db, make_user):
    user = make_user()
    before = metrics.CHANGE_TO_RIGHTS._sum.get()

    after_signal_sync(
        user_id=str(user.pk),
        result=result(user, removed=["alpha.example.org"]),
        signalled_at=time.time() - 3,
        recheck=True,
    )

    assert 2.5 <= metrics.CHANGE_TO_RIGHTS._sum.get() - before <= 10


def run(**fields) -> SyncRun:
    return SyncRun.objects.create(
        scope=SyncRun.Scope.ORGANISATION, trigger="change_signal", **fields
    )


def test_an_organisation_recheck_follows_its_first_run(db):
    unchanged = run(status=SyncRun.Status.DONE, users_changed=0)
    changed = run(status=SyncRun.Status.DONE, users_changed=2)
    running = run(status=SyncRun.Status.RUNNING)
    skipped = run(status=SyncRun.Status.SKIPPED)
    lost = run(status=SyncRun.Status.RUNNING)
    SyncRun.objects.filter(pk=lost.pk).update(started_at=timezone.now() - timedelta(days=1))

    assert organisation_recheck(run_id=unchanged.pk) is RecheckDecision.RUN
    assert organisation_recheck(run_id=changed.pk) is RecheckDecision.NOT_NEEDED
    assert organisation_recheck(run_id=running.pk) is RecheckDecision.WAIT
    # Another run of the organisation was in progress: it may have asked before the change.
    assert organisation_recheck(run_id=skipped.pk) is RecheckDecision.RUN
    assert organisation_recheck(run_id=lost.pk) is RecheckDecision.RUN


def test_signals_inside_a_users_recheck_window_wait_for_its_end(
    transactional_db, settings, make_user, broker_queues
):
    """After a settled sync that changed the rights, a burst of signals costs one more sync,
    at the end of the window, without a recheck of its own."""
    settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS = 2.0
    settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS = 20.0
    user = make_user()
    signal = ChangeSignal(event=ChangeEvent.ACCOUNT_UPDATED, account_email=user.email)
    receive_change_signal(signal=signal)
    [first] = broker_queues.messages("signals")
    assert first["kwargs"]["recheck"] is True
    # The settled sync ran and changed the rights.
    EntitlementSyncState.objects.filter(user=user).update(started_at=F("enqueued_at"))
    after_signal_sync(
        user_id=str(user.pk),
        result=result(user, added=["alpha.example.org"]),
        signalled_at=first["kwargs"]["signalled_at"],
        recheck=True,
    )

    receipts = [receive_change_signal(signal=signal).result for _ in range(5)]

    assert receipts == ["requested"] + ["collapsed"] * 4
    [_, at_window_end] = broker_queues.messages("signals")
    assert at_window_end["kwargs"]["recheck"] is False
    state = EntitlementSyncState.objects.get(user=user)
    # The window: settle + recheck from the first signal.
    assert 19 <= (state.enqueued_at - timezone.now()).total_seconds() <= 22.5


def test_inside_the_window_a_pending_recheck_serves_the_signals(
    transactional_db, settings, make_user, broker_queues
):
    settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS = 20.0
    user = make_user()
    signal = ChangeSignal(event=ChangeEvent.ACCOUNT_UPDATED, account_email=user.email)
    receive_change_signal(signal=signal)
    EntitlementSyncState.objects.filter(user=user).update(started_at=F("enqueued_at"))
    after_signal_sync(user_id=str(user.pk), result=result(user), signalled_at=1.0, recheck=True)

    receipts = [receive_change_signal(signal=signal).result for _ in range(3)]

    assert receipts == ["collapsed"] * 3
    assert broker_queues.length("signals") == 2, "the settled sync and its recheck only"
