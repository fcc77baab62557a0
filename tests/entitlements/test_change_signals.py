"""The change-signal service: a user's signals join a round of two asks (a settled sync, and a
recheck unless a lone signal's sync changed the rights), and an organisation's second run waits
for its first and is skipped when that one changed rights."""

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
    postpone_signal_sync,
    receive_change_signal,
    signal_sync_starting,
)
from core.entitlements.results import SyncResult
from core.entitlements.signal_rounds import RECHECK_CAP, Phase
from core.models import EntitlementSyncState, SyncRun


def result(user, **changes) -> SyncResult:
    return SyncResult(user_id=str(user.pk), trigger="change_signal", **{"status": "ok", **changes})


def settled_ask(user, *, changed: bool, asked_at: float | None = None, status: str = "ok"):
    """The round's settled sync ran (its row says it started) and ended with this result."""
    phase, wait = signal_sync_starting(user_id=str(user.pk))
    assert (phase, wait) == (Phase.SETTLE, 0.0)
    EntitlementSyncState.objects.filter(user=user).update(started_at=F("enqueued_at"))
    changes = {"added": ["alpha.example.org"]} if changed else {}
    after_signal_sync(
        user_id=str(user.pk),
        result=result(user, status=status, **changes),
        signalled_at=1.0,
        phase=phase,
        asked_at=time.time() if asked_at is None else asked_at,
    )


def signal(user) -> str:
    return receive_change_signal(
        signal=ChangeSignal(event=ChangeEvent.ACCOUNT_UPDATED, account_email=user.email)
    ).result


def due_in(user) -> float:
    state = EntitlementSyncState.objects.get(user=user)
    return (state.enqueued_at - timezone.now()).total_seconds()


def test_an_unchanged_settled_sync_asks_once_more_after_the_recheck_delay(
    transactional_db, settings, make_user, broker_queues
):
    settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS = 20.0
    user = make_user()
    assert signal(user) == "requested"

    settled_ask(user, changed=False)

    [_, recheck] = broker_queues.messages("signals")
    assert recheck["args"] == [str(user.pk), "change_signal"]
    assert recheck["kwargs"]["signal_phase"] == "recheck"
    assert 19 <= due_in(user) <= 21


def test_a_lone_signal_whose_settled_sync_changed_the_rights_asks_no_more(
    transactional_db, settings, make_user, broker_queues
):
    settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS = 2.0
    user = make_user()
    assert signal(user) == "requested"

    settled_ask(user, changed=True, asked_at=time.time() + 2)

    assert broker_queues.length("signals") == 1, "the settled sync only"
    # The round is over: the user's next signal opens another.
    assert signal(user) == "requested"


def test_a_changing_sync_records_its_change_to_rights_time(db, make_user):
    user = make_user()
    before = metrics.CHANGE_TO_RIGHTS._sum.get()

    after_signal_sync(
        user_id=str(user.pk),
        result=result(user, removed=["alpha.example.org"]),
        signalled_at=time.time() - 3,
        phase=Phase.SETTLE,
        asked_at=time.time(),
    )

    assert 2.5 <= metrics.CHANGE_TO_RIGHTS._sum.get() - before <= 10


def test_signals_while_the_settled_sync_waits_join_it_without_a_database_write(
    transactional_db, make_user, broker_queues, django_assert_max_num_queries
):
    user = make_user()
    assert signal(user) == "requested"
    requested_at = EntitlementSyncState.objects.get(user=user).requested_at

    # One lookup of the user each: nothing written.
    with django_assert_max_num_queries(5):
        assert [signal(user) for _ in range(5)] == ["collapsed"] * 5

    assert broker_queues.length("signals") == 1
    assert EntitlementSyncState.objects.get(user=user).requested_at == requested_at


def test_a_signal_after_the_settled_ask_leads_to_the_recheck_even_when_it_changed_the_rights(
    transactional_db, settings, make_user, broker_queues
):
    """The settled sync changed the rights, but a signal came after it asked: its change may
    not have been visible then, so the round's recheck is still due."""
    settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS = 20.0
    user = make_user()
    assert signal(user) == "requested"
    signal_sync_starting(user_id=str(user.pk))
    asked_at = time.time()
    assert signal(user) == "collapsed", "the round's recheck serves it"
    EntitlementSyncState.objects.filter(user=user).update(started_at=F("enqueued_at"))

    after_signal_sync(
        user_id=str(user.pk),
        result=result(user, added=["alpha.example.org"]),
        signalled_at=1.0,
        phase=Phase.SETTLE,
        asked_at=asked_at,
    )

    [_, recheck] = broker_queues.messages("signals")
    assert recheck["kwargs"]["signal_phase"] == "recheck"
    assert 19 <= due_in(user) <= 21
    assert signal(user) == "collapsed", "a signal while the recheck waits joins it"
    assert broker_queues.length("signals") == 2


def test_the_recheck_waits_for_the_users_signals_to_pause(
    transactional_db, settings, make_user, broker_queues
):
    settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS = 20.0
    user = make_user()
    signal(user)
    settled_ask(user, changed=False, asked_at=time.time() - 30)
    assert signal(user) == "collapsed"

    phase, wait = signal_sync_starting(user_id=str(user.pk))

    # Due 20 s after the last signal (just now), not 20 s after the settled ask (past).
    assert phase is Phase.RECHECK
    assert 19 <= wait <= 20


def test_a_burst_postpones_its_recheck_no_longer_than_the_cap(
    transactional_db, settings, make_user, broker_queues
):
    settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS = 20.0
    user = make_user()
    signal(user)
    settled_ask(user, changed=False, asked_at=time.time() - RECHECK_CAP * 20 + 5)
    signal(user)

    phase, wait = signal_sync_starting(user_id=str(user.pk))

    assert phase is Phase.RECHECK
    assert 4 <= wait <= 5


def test_a_postponed_recheck_is_sent_again_and_its_row_says_when(
    transactional_db, make_user, broker_queues
):
    user = make_user()
    signal(user)

    postpone_signal_sync(
        user_id=str(user.pk),
        seconds=15,
        task_kwargs={"signalled_at": 1.0, "signal_phase": "recheck"},
    )

    [_, again] = broker_queues.messages("signals")
    assert again["args"] == [str(user.pk), "change_signal"]
    assert again["kwargs"] == {"signalled_at": 1.0, "signal_phase": "recheck"}
    assert 14 <= due_in(user) <= 15


def test_a_signal_during_the_recheck_opens_the_next_round(
    transactional_db, settings, make_user, broker_queues
):
    settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS = 2.0
    settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS = 20.0
    user = make_user()
    signal(user)
    settled_ask(user, changed=False, asked_at=time.time() - RECHECK_CAP * 20)
    # Capped: the recheck asks now although the burst goes on.
    assert signal_sync_starting(user_id=str(user.pk)) == (Phase.RECHECK, 0.0)
    recheck_asked_at = time.time()
    assert signal(user) == "collapsed", "during the recheck's ask"
    EntitlementSyncState.objects.filter(user=user).update(started_at=F("enqueued_at"))

    after_signal_sync(
        user_id=str(user.pk),
        result=result(user),
        signalled_at=1.0,
        phase=Phase.RECHECK,
        asked_at=recheck_asked_at,
    )

    *_, next_round = broker_queues.messages("signals")
    assert next_round["kwargs"]["signal_phase"] == "settle"
    assert 1 <= due_in(user) <= 2.5
    assert signal(user) == "collapsed", "the next round's settled sync serves it"


def test_a_sync_that_could_not_ask_ends_its_round_and_requests_no_recheck(
    transactional_db, make_user, broker_queues
):
    """Its lock held through every retry, the settled sync never asked: no recheck (which
    would count as the signal's last ask); the request stays on the row for the sweep."""
    user = make_user()
    signal(user)

    settled_ask(user, changed=False, status="skipped")

    assert broker_queues.length("signals") == 1, "the settled sync only"
    assert signal(user) == "requested", "the round ended: the next signal opens one"


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
