"""The collapse rule of request_sync: a request collapses only into a task that has not started;
one made once a sync started (or ended) gets a task of its own, whose sync starts after it."""

from django.utils import timezone

from core.entitlements import request_sync
from core.entitlements.receipts import RequestOutcome
from core.entitlements.sync import load_users_starting_sync
from core.models import EntitlementSyncState


def _finish(user) -> None:
    EntitlementSyncState.objects.filter(user=user).update(finished_at=timezone.now())


def test_requests_collapse_into_a_task_not_started_yet(transactional_db, make_user, broker_queues):
    user = make_user()

    outcomes = [request_sync(user=user, trigger="login").outcome for _ in range(5)]

    assert outcomes == [RequestOutcome.QUEUED] + [RequestOutcome.COLLAPSED] * 4
    assert broker_queues.length("interactive") == 1


def test_a_request_once_the_sync_started_gets_its_own_task(
    transactional_db, make_user, broker_queues
):
    user = make_user()
    first = request_sync(user=user, trigger="login")
    load_users_starting_sync(user_ids=[user.pk])

    second = request_sync(user=user, trigger="admin")
    third = request_sync(user=user, trigger="admin")

    assert (second.outcome, third.outcome) == (RequestOutcome.QUEUED, RequestOutcome.COLLAPSED)
    assert [m["id"] for m in broker_queues.messages("interactive")] == [
        first.task_id,
        second.task_id,
    ]
    state = EntitlementSyncState.objects.get(user=user)
    assert state.enqueued_at > state.started_at


def test_a_request_once_the_sync_ended_gets_its_own_task(
    transactional_db, make_user, broker_queues
):
    user = make_user()
    request_sync(user=user, trigger="login")
    load_users_starting_sync(user_ids=[user.pk])
    _finish(user)

    again = request_sync(user=user, trigger="command")

    assert again.outcome == RequestOutcome.QUEUED
    assert [m["args"][1] for m in broker_queues.messages("interactive")] == ["login", "command"]
