"""How fresh the admins' rights are and whether full runs fit their interval: on the index,
in the users list's filter, in /metrics, and in the WARNING a worker logs at start."""

import logging
from datetime import timedelta

import pytest
from celery.signals import worker_ready
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from core.models import EntitlementSyncState, SyncRun
from tests.admin.test_overview import link_after, text_of
from tests.factories import SyncRunFactory

INDEX = reverse("admin:index")
NS = "messages_entitlements"
TOKEN = "a-metrics-token"

pytestmark = pytest.mark.usefixtures("fast_password_hasher")


@pytest.fixture
def admins(settings, make_synced_admins):
    """Hourly runs; one admin confirmed ten minutes ago, one three hours ago, one never."""
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 3600
    fresh, stale, never = make_synced_admins(3)
    now = timezone.now()
    for user, age in ((fresh, timedelta(minutes=10)), (stale, timedelta(hours=3))):
        EntitlementSyncState.objects.filter(user=user).update(rights_confirmed_at=now - age)
    return {"fresh": fresh, "stale": stale, "never": never}


def _run(*, users: int, minutes: float, **fields) -> SyncRun:
    run = SyncRunFactory(users_enqueued=users, users_done=users, **fields)
    started = timezone.now() - timedelta(minutes=minutes + 1)
    SyncRun.objects.filter(pk=run.pk).update(
        started_at=started, finished_at=started + timedelta(minutes=minutes)
    )
    return run


def test_the_index_shows_the_oldest_confirmation_and_lists_the_stale_admins(
    superuser_client, admins
):
    page = superuser_client.get(INDEX)
    shown = text_of(page)

    assert "Admins' rights last confirmed upstream: oldest 3 h 0 min ago (1 never confirmed)" in (
        shown
    )
    assert "2 of 3 unconfirmed for two intervals (1 h 0 min each)" in shown
    listed = text_of(superuser_client.get(link_after(page, 'id="admin-freshness"')))
    assert admins["stale"].email in listed
    assert admins["never"].email in listed
    assert admins["fresh"].email not in listed


def test_the_users_filter_over_one_interval_is_the_same_rule(superuser_client, admins):
    listed = text_of(
        superuser_client.get(reverse("admin:core_user_changelist") + "?unconfirmed_intervals=1")
    )

    assert admins["stale"].email in listed
    assert admins["fresh"].email not in listed


def test_a_run_longer_than_its_interval_says_so_on_the_index_with_what_to_change(
    superuser_client, settings, db
):
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 3600
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 50
    _run(users=360_000, minutes=150)
    skipped = _run(users=0, minutes=0, status=SyncRun.Status.SKIPPED)

    page = superuser_client.get(INDEX)
    shown = text_of(page)

    assert "Full resync capacity: over capacity: a full resync of 360000 users at 50 calls/s " in (
        shown
    )
    assert "needs 7200 s, the last run took 9000 s" in shown
    assert "raise ENTITLEMENTS_RATE_LIMIT_PER_SECOND to at least 100.0" in shown
    assert "ENTITLEMENTS_RESYNC_INTERVAL_SECONDS to at least 9000" in shown
    assert "1 run skipped in the last day (one was still running)" in shown
    runs = text_of(superuser_client.get(link_after(page, 'id="resync-capacity"')))
    assert f"{skipped.pk} " in runs
    assert "Skipped (another run in progress)" in runs


def test_a_run_that_fits_says_its_ratio(superuser_client, settings, db):
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 3600
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 50
    _run(users=18_000, minutes=10)

    shown = text_of(superuser_client.get(INDEX))

    assert "Full resync capacity: 18000 users fit in the interval (ratio 0.17)." in shown


def test_a_worker_warns_at_start_with_the_numbers(settings, db, caplog):
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 3600
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 50
    _run(users=360_000, minutes=50)

    with caplog.at_level(logging.WARNING):
        worker_ready.send(sender=None)

    [record] = [r for r in caplog.records if "over capacity" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "360000 users at 50 calls/s needs 7200 s" in record.getMessage()
    assert "ENTITLEMENTS_RESYNC_INTERVAL_SECONDS=3600 (ratio 2.00)" in record.getMessage()


def test_a_worker_that_fits_logs_nothing(settings, db, caplog):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 50
    _run(users=1000, minutes=1)

    with caplog.at_level(logging.WARNING):
        worker_ready.send(sender=None)

    assert not [r for r in caplog.records if "capacity" in r.getMessage()]


def test_the_metrics_carry_the_ages_the_stale_counts_and_the_capacity(client, settings, admins):
    settings.METRICS_TOKEN = TOKEN
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 50
    _run(users=90_000, minutes=20)

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }

    age = f"{NS}_admin_rights_age_seconds"
    assert samples[(age, (("quantile", "1"),))] == pytest.approx(3 * 3600, abs=30)
    # Two confirmed admins, 10 min and 3 h: the median's nearest rank is the older (rank 0).
    assert samples[(age, (("quantile", "0.5"),))] == pytest.approx(3 * 3600, abs=30)
    assert samples[(age, (("quantile", "0.99"),))] == pytest.approx(3 * 3600, abs=30)
    unconfirmed = f"{NS}_admins_unconfirmed"
    assert samples[(unconfirmed, (("intervals", "1"),))] == 2
    assert samples[(unconfirmed, (("intervals", "2"),))] == 2
    assert samples[(unconfirmed, (("intervals", "never"),))] == 1
    assert samples[(f"{NS}_admins", ())] == 3
    # 90,000 users at 50/s: 1,800 s of an hour.
    assert samples[(f"{NS}_resync_capacity_ratio", ())] == pytest.approx(0.5)
