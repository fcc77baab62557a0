"""core/capacity.py: whether full runs fit their interval, from the rate limit and from the
last full run; the numbers and what to change when they do not."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core.capacity import last_run_capacity, resync_capacity
from core.models import SyncRun


def _full_run(*, users: int, seconds: float, status: str = "done") -> SyncRun:
    run = SyncRun.objects.create(trigger="periodic", users_enqueued=users, status=status)
    started = timezone.now() - timedelta(seconds=seconds)
    SyncRun.objects.filter(pk=run.pk).update(started_at=started, finished_at=timezone.now())
    return run


@pytest.fixture
def hourly_at_fifty(settings):
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 3600
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 50


def test_the_rate_limit_alone_can_make_runs_too_long(db, hourly_at_fifty):
    _full_run(users=360_000, seconds=600)

    capacity = resync_capacity()

    assert capacity.needed_seconds == 7200
    assert (capacity.ratio, capacity.over) == (2.0, True)
    advice = capacity.advice()
    assert "ENTITLEMENTS_RATE_LIMIT_PER_SECOND to at least 100.0" in advice
    assert "ENTITLEMENTS_RESYNC_INTERVAL_SECONDS to at least 7200" in advice


def test_a_last_run_longer_than_its_interval_is_over_capacity(db, hourly_at_fifty):
    _full_run(users=1000, seconds=5400)

    capacity = resync_capacity()

    assert capacity.needed_seconds == 20
    assert capacity.ratio == pytest.approx(1.5, abs=0.01)
    assert capacity.over


def test_skipped_runs_and_runs_that_sent_nothing_do_not_count(db, hourly_at_fifty):
    _full_run(users=1000, seconds=60)
    _full_run(users=900_000, seconds=1, status="skipped")
    _full_run(users=0, seconds=1)

    assert last_run_capacity().users == 1000


def test_before_any_run_nothing_is_known_from_runs(db, hourly_at_fifty):
    assert last_run_capacity() is None
    assert resync_capacity().users == 0
    assert not resync_capacity().over
