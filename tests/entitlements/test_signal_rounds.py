"""A user's round of change signals, on the real cache: who opens it, when its recheck is due,
and that a signal arriving at any point of it leads to an ask at least the settle delay later."""

import uuid

import pytest

from core.entitlements import signal_rounds
from core.entitlements.signal_rounds import RECHECK_CAP, Phase, RecheckPlan

SETTLE = 2.0
RECHECK = 20.0


@pytest.fixture(autouse=True)
def _delays(settings):
    settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS = SETTLE
    settings.ENTITLEMENTS_CHANGE_RECHECK_SECONDS = RECHECK


@pytest.fixture
def user_id() -> str:
    return str(uuid.uuid4())


def test_the_first_signal_opens_the_round_and_the_others_join_it(user_id):
    assert signal_rounds.join_or_open(user_id=user_id, now=100.0) is True
    assert signal_rounds.join_or_open(user_id=user_id, now=100.5) is False
    assert signal_rounds.join_or_open(user_id=user_id, now=101.0) is False
    # Another user's round is their own.
    assert signal_rounds.join_or_open(user_id=str(uuid.uuid4()), now=101.0) is True


def test_a_lone_signal_whose_settled_ask_changed_the_rights_ends_the_round(user_id):
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.settled_ask_starting(user_id=user_id, now=102.0)

    assert (
        signal_rounds.settled_ask_ended(user_id=user_id, asked_at=102.0, changed=True, now=102.1)
        is None
    )
    assert signal_rounds.join_or_open(user_id=user_id, now=103.0) is True


def test_an_unchanged_settled_ask_plans_the_recheck_after_the_recheck_delay(user_id):
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.settled_ask_starting(user_id=user_id, now=102.0)

    plan = signal_rounds.settled_ask_ended(
        user_id=user_id, asked_at=102.0, changed=False, now=102.1
    )

    assert plan == RecheckPlan(Phase.RECHECK, pytest.approx(RECHECK - 0.1))
    assert signal_rounds.recheck_is_next(user_id=user_id)


@pytest.mark.parametrize("late", [0.5, 1.9, 3.0], ids=["before_ask", "just_before", "after_ask"])
def test_a_signal_less_than_the_settle_delay_before_the_ask_or_after_it_gets_the_recheck(
    user_id, late
):
    """However the settled ask ended, a signal its answer may not have seen is rechecked."""
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.join_or_open(user_id=user_id, now=100.0 + late)
    signal_rounds.settled_ask_starting(user_id=user_id, now=102.0)

    plan = signal_rounds.settled_ask_ended(user_id=user_id, asked_at=102.0, changed=True, now=103.5)

    assert plan is not None and plan.phase is Phase.RECHECK
    # Due RECHECK after the later of the ask and the last signal.
    assert plan.delay_seconds == pytest.approx(max(102.0, 100.0 + late) + RECHECK - 103.5)


def test_a_signal_the_settle_delay_before_the_ask_was_seen_by_it(user_id):
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.join_or_open(user_id=user_id, now=100.0 + 0.01)
    signal_rounds.settled_ask_starting(user_id=user_id, now=102.5)

    assert (
        signal_rounds.settled_ask_ended(user_id=user_id, asked_at=102.5, changed=True, now=103.0)
        is None
    )


def test_the_recheck_waits_until_the_signals_pause_for_the_recheck_delay(user_id):
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.settled_ask_starting(user_id=user_id, now=102.0)
    signal_rounds.settled_ask_ended(user_id=user_id, asked_at=102.0, changed=False, now=102.1)
    for moment in (110.0, 118.0, 125.0):
        assert signal_rounds.join_or_open(user_id=user_id, now=moment) is False

    assert signal_rounds.recheck_starting(user_id=user_id, now=122.0) == pytest.approx(23.0)
    # Due 20 s after the last signal: it asks (and then serves no signal more).
    assert signal_rounds.recheck_starting(user_id=user_id, now=145.0) == 0.0
    assert signal_rounds.recheck_is_next(user_id=user_id)


def test_an_endless_burst_is_rechecked_at_the_cap(user_id):
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.settled_ask_starting(user_id=user_id, now=102.0)
    signal_rounds.settled_ask_ended(user_id=user_id, asked_at=102.0, changed=False, now=102.1)
    cap = 102.0 + RECHECK_CAP * RECHECK
    signal_rounds.join_or_open(user_id=user_id, now=cap - 1)

    assert signal_rounds.recheck_starting(user_id=user_id, now=cap - 10) == pytest.approx(10.0)
    assert signal_rounds.recheck_starting(user_id=user_id, now=cap) == 0.0


def test_the_round_ends_with_its_recheck_unless_a_signal_came_too_late_for_it(user_id):
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.settled_ask_starting(user_id=user_id, now=102.0)
    signal_rounds.settled_ask_ended(user_id=user_id, asked_at=102.0, changed=False, now=102.1)
    signal_rounds.recheck_starting(user_id=user_id, now=122.0)

    assert signal_rounds.recheck_ended(user_id=user_id, asked_at=122.0, now=122.1) is None
    assert signal_rounds.join_or_open(user_id=user_id, now=130.0) is True, "the next round"


def test_a_signal_during_the_recheck_opens_the_next_round_with_its_settled_ask(user_id):
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.settled_ask_starting(user_id=user_id, now=102.0)
    signal_rounds.settled_ask_ended(user_id=user_id, asked_at=102.0, changed=False, now=102.1)
    signal_rounds.recheck_starting(user_id=user_id, now=122.0)
    assert signal_rounds.join_or_open(user_id=user_id, now=122.05) is False

    plan = signal_rounds.recheck_ended(user_id=user_id, asked_at=122.0, now=122.1)

    assert plan == RecheckPlan(Phase.SETTLE, pytest.approx(122.05 + SETTLE - 122.1))
    assert signal_rounds.join_or_open(user_id=user_id, now=122.2) is False, "joins that round"


def test_a_signal_after_the_round_ended_opens_a_round_of_its_own(user_id):
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.settled_ask_starting(user_id=user_id, now=102.0)
    signal_rounds.settled_ask_ended(user_id=user_id, asked_at=102.0, changed=True, now=102.1)

    assert signal_rounds.join_or_open(user_id=user_id, now=102.2) is True


def test_a_round_without_ask_ends_and_an_abandoned_one_too(user_id):
    signal_rounds.join_or_open(user_id=user_id, now=100.0)
    signal_rounds.end_without_ask(user_id=user_id)
    assert signal_rounds.join_or_open(user_id=user_id, now=101.0) is True
    signal_rounds.abandon(user_id=user_id)
    assert signal_rounds.join_or_open(user_id=user_id, now=102.0) is True
