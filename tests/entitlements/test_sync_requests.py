"""request_sync, the one door every trigger uses: recorded, deduplicated, sent after commit,
never failing its caller; the sweep sends what never ran."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from core.entitlements.receipts import RequestOutcome
from core.entitlements.sync_requests import (
    enqueue_outstanding_requests,
    request_resync,
    request_sync,
)
from core.models import EntitlementSyncState, MailDomain
from tests.support.broker import producer_app


def test_first_request_records_and_enqueues_after_commit(
    transactional_db, make_user, broker_queues
):
    user = make_user()

    with transaction.atomic():
        task_id = request_sync(user=user, trigger="login").task_id
        # Nothing reaches the broker before the transaction commits.
        assert broker_queues.length("interactive") == 0

    state = EntitlementSyncState.objects.get(user=user)
    assert state.status == EntitlementSyncState.Status.PENDING
    assert state.requested_at is not None
    assert state.enqueued_at == state.requested_at
    assert state.last_trigger == "login"
    [message] = broker_queues.messages("interactive")
    assert message == {
        "task": "entitlements.sync_user",
        "id": task_id,
        "args": [str(user.pk), "login"],
        "kwargs": {},
        "expires": None,
    }


def test_rolled_back_request_sends_nothing(transactional_db, make_user, broker_queues):
    user = make_user()

    with pytest.raises(RuntimeError), transaction.atomic():
        request_sync(user=user, trigger="login")
        raise RuntimeError("the login failed after the request")

    assert broker_queues.length("interactive") == 0
    assert not EntitlementSyncState.objects.filter(user=user).exists()


def test_ten_requests_in_a_second_queue_one_task(transactional_db, make_user, broker_queues):
    user = make_user()

    task_ids = []
    for _ in range(10):
        with transaction.atomic():
            task_ids.append(request_sync(user=user, trigger="login").task_id)
        time.sleep(0.05)

    assert task_ids[0] is not None
    assert task_ids[1:] == [None] * 9
    assert broker_queues.length("interactive") == 1
    state = EntitlementSyncState.objects.get(user=user)
    # The latest request is the one recorded: a later sweep compares syncs against it.
    assert state.requested_at > state.enqueued_at


def test_concurrent_requests_from_many_connections_queue_one_task(
    transactional_db, make_user, broker_queues
):
    user = make_user()
    start = threading.Barrier(8)
    results = []

    def login():
        try:
            start.wait()
            with transaction.atomic():
                results.append(request_sync(user=user, trigger="login"))
        finally:
            connection.close()

    threads = [threading.Thread(target=login) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 8
    assert sum(request.outcome == RequestOutcome.QUEUED for request in results) == 1
    assert broker_queues.length("interactive") == 1


def test_request_after_the_dedup_window_queues_again(
    transactional_db, make_user, broker_queues, settings
):
    settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS = 10
    user = make_user()
    request_sync(user=user, trigger="login")
    EntitlementSyncState.objects.filter(user=user).update(
        enqueued_at=timezone.now() - timedelta(seconds=11)
    )

    assert request_sync(user=user, trigger="admin").task_id is not None

    assert [m["args"][1] for m in broker_queues.messages("interactive")] == ["login", "admin"]


def test_explicit_queue_wins_over_the_route(transactional_db, make_user, broker_queues):
    user = make_user()

    request_sync(user=user, trigger="command", queue="bulk")

    assert broker_queues.length("interactive") == 0
    assert broker_queues.length("bulk") == 1


def test_later_request_keeps_the_status_of_the_last_sync(
    transactional_db, make_user, broker_queues
):
    user = make_user()
    EntitlementSyncState.objects.create(user=user, status=EntitlementSyncState.Status.INVALID)

    request_sync(user=user, trigger="login")

    assert EntitlementSyncState.objects.get(user=user).status == "invalid"


def test_broker_down_does_not_fail_the_caller_and_the_sweep_sends_it_later(
    transactional_db, make_user, private_redis
):
    user = make_user()
    # The private Redis is not running yet: the broker is down.
    with producer_app(private_redis.url):
        started = time.perf_counter()
        with transaction.atomic():
            task_id = request_sync(user=user, trigger="login").task_id
        elapsed = time.perf_counter() - started

    assert task_id is not None
    assert elapsed < 2, "a dead broker must not hold a login"
    state = EntitlementSyncState.objects.get(user=user)
    assert state.requested_at is not None
    assert state.enqueued_at is None, "the failed send is left to the sweep"

    private_redis.start()
    with producer_app(private_redis.url):
        assert enqueue_outstanding_requests() == 1
        # Sent once: the sweep's own claim dedups the next sweep.
        assert enqueue_outstanding_requests() == 0

    from tests.support.broker import BrokerQueues

    [message] = BrokerQueues(private_redis.url).messages("interactive")
    assert message["args"] == [str(user.pk), "login"]
    assert message["expires"] is not None


def test_broker_dying_while_running_does_not_fail_the_caller(
    transactional_db, make_user, private_redis
):
    private_redis.start()
    first, second = make_user(), make_user()
    with producer_app(private_redis.url):
        assert request_sync(user=first, trigger="login").task_id is not None
        private_redis.stop()
        with transaction.atomic():
            unsent = request_sync(user=second, trigger="login")

    # Known once the transaction committed and the send failed.
    assert unsent.outcome == RequestOutcome.NOT_SENT
    assert EntitlementSyncState.objects.get(user=first).enqueued_at is not None
    assert EntitlementSyncState.objects.get(user=second).enqueued_at is None


class TestSweep:
    """Which recorded requests the sweep sends."""

    @pytest.fixture
    def state(self, transactional_db, make_user):
        def make(**fields):
            return EntitlementSyncState.objects.create(user=make_user(), **fields)

        return make

    def test_sends_only_unserved_requests_without_a_recent_task(
        self, state, broker_queues, settings
    ):
        settings.ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS = 120
        now = timezone.now()
        ago = lambda seconds: now - timedelta(seconds=seconds)  # noqa: E731
        never_sent = state(requested_at=ago(300), last_trigger="login")
        task_lost = state(requested_at=ago(300), enqueued_at=ago(300), last_trigger="admin")
        # A sync started before the request cannot have honoured it.
        served_too_early = state(requested_at=ago(200), started_at=ago(250), finished_at=ago(249))
        died_running = state(requested_at=ago(900), enqueued_at=ago(900), started_at=ago(800))
        # Left alone:
        state(requested_at=ago(300), enqueued_at=ago(30))  # a task was sent recently
        state(requested_at=ago(300), started_at=ago(290), finished_at=ago(289))  # served
        state(requested_at=ago(60), started_at=ago(50))  # being served right now
        state()  # never requested

        assert enqueue_outstanding_requests() == 4

        sent = {tuple(m["args"]) for m in broker_queues.messages("interactive")}
        assert sent == {
            (str(never_sent.user_id), "login"),
            (str(task_lost.user_id), "admin"),
            (str(served_too_early.user_id), "sweep"),
            (str(died_running.user_id), "sweep"),
        }


class TestRequestResync:
    """A full or a domain's resync: sent now, its receipt says so; never an exception."""

    def test_a_full_resync_is_sent_and_its_receipt_carries_the_task(
        self, transactional_db, broker_queues
    ):
        receipt = request_resync(trigger="admin")

        [message] = broker_queues.messages("bulk")
        assert (message["task"], message["args"]) == ("entitlements.sync_all_admins", ["admin"])
        assert (receipt.outcome, receipt.task_id, receipt.maildomain_name) == (
            RequestOutcome.QUEUED,
            message["id"],
            "",
        )

    def test_a_broker_that_cannot_be_reached_gives_a_receipt_not_sent(
        self, transactional_db, private_redis
    ):
        maildomain = MailDomain.objects.create(name="alpha.example.org")

        with producer_app(private_redis.url):
            receipt = request_resync(maildomain=maildomain, trigger="command")

        assert (receipt.outcome, receipt.task_id, receipt.maildomain_name) == (
            RequestOutcome.NOT_SENT,
            None,
            "alpha.example.org",
        )
