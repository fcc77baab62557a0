"""core/querysets.py: a sync's life on its state row: running and served, as the model answers
for one row and its queryset selects in SQL, the same for every case; a task waiting."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import EntitlementSyncState
from tests.factories import UserFactory

NOW = timezone.now()


def ago(seconds: int):
    return NOW - timedelta(seconds=seconds)


# (requested, started, finished) seconds ago, None for never -> (running, served).
CASES = {
    "never requested nor synced": ((None, None, None), (False, False)),
    "requested, not started": ((10, None, None), (False, False)),
    "first sync running, started after the request": ((10, 5, None), (True, True)),
    "sync running that started before the request": ((5, 10, 20), (True, False)),
    "served and finished": ((10, 5, 4), (False, True)),
    "finished before a newer request": ((3, 10, 9), (False, False)),
    "started again after the last finish": ((30, 5, 20), (True, True)),
    "synced without a request (a run)": ((None, 10, 9), (False, False)),
}


@pytest.mark.parametrize(("times", "expected"), CASES.values(), ids=CASES.keys())
def test_running_and_served_agree_on_the_row_and_in_sql(db, times, expected):
    requested, started, finished = (None if t is None else ago(t) for t in times)
    state = EntitlementSyncState.objects.create(
        user=UserFactory(), requested_at=requested, started_at=started, finished_at=finished
    )
    rows = EntitlementSyncState.objects.filter(pk=state.pk)
    requested_but_unserved = requested is not None and not expected[1]

    assert (state.is_running(), state.is_served()) == expected
    assert (rows.running().exists(), rows.unserved().exists()) == (
        expected[0],
        requested_but_unserved,
    )


def test_served_may_be_asked_of_an_earlier_request(db):
    state = EntitlementSyncState.objects.create(
        user=UserFactory(), requested_at=ago(1), started_at=ago(5), finished_at=ago(4)
    )

    assert (state.is_served(), state.is_served(ago(6))) == (False, True)


@pytest.mark.parametrize(
    ("enqueued", "started", "waiting"),
    [(None, None, False), (30, None, False), (5, None, True), (5, 10, True), (5, 4, False)],
    ids=[
        "never queued",
        "queued before the window",
        "queued, not started",
        "started before it was queued",
        "started since",
    ],
)
def test_a_task_waits_while_queued_in_the_window_and_not_started(db, enqueued, started, waiting):
    EntitlementSyncState.objects.create(
        user=UserFactory(),
        enqueued_at=None if enqueued is None else ago(enqueued),
        started_at=None if started is None else ago(started),
    )

    free = EntitlementSyncState.objects.without_task_waiting(queued_since=ago(10))

    assert free.exists() is not waiting
