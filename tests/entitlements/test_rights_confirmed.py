"""When each admin's rights were last confirmed: written by the reconcile's own UPDATE on an
authoritative answer (applied or unchanged), kept on a failure, measured per admin."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.entitlements import sync_user_entitlements
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User
from core.selectors import admin_freshness

ADMIN = "admin@alpha.example.org"
ALPHA = "alpha.example.org"
SIRET = "12345678900017"
HOUR = timedelta(hours=1)


@pytest.fixture
def admin(settings, db, deploycenter_backend):
    """An admin the stub names on alpha; every sync asks the stub (no fresh or stale window)."""
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 0
    MailDomain.objects.create(name=ALPHA)
    user = User.objects.create_user(email=ADMIN)
    EntitlementSyncState.objects.create(user=user, forwarded_claims={"siret": SIRET})
    deploycenter_backend.set_admin_domains(ADMIN, [ALPHA])
    return user


def _confirmed_at(user):
    return EntitlementSyncState.objects.get(user=user).rights_confirmed_at


def test_an_applied_answer_confirms_the_rights_in_the_state_update_the_reconcile_writes(admin):
    before = timezone.now()
    with CaptureQueriesContext(connection) as queries:
        sync_user_entitlements(user_id=admin.pk, trigger="login")

    assert MailDomainAccess.objects.filter(user=admin, maildomain__name=ALPHA).exists()
    assert _confirmed_at(admin) >= before
    state_updates = [
        query["sql"]
        for query in queries.captured_queries
        if query["sql"].startswith('UPDATE "core_entitlementsyncstate"')
        and '"rights_confirmed_at"' in query["sql"]
    ]
    # The one UPDATE that records the status carries the confirmation: no query of its own.
    assert len(state_updates) == 1
    assert '"status" = ' in state_updates[0]


def test_an_unchanged_answer_confirms_again_and_a_failure_keeps_the_last_confirmation(
    admin, deploycenter_backend
):
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    first = _confirmed_at(admin)

    sync_user_entitlements(user_id=admin.pk, trigger="periodic")
    unchanged = _confirmed_at(admin)
    assert unchanged > first

    deploycenter_backend.fail_with(503)
    sync_user_entitlements(user_id=admin.pk, trigger="periodic")
    state = EntitlementSyncState.objects.get(user=admin)
    assert state.status == EntitlementSyncState.Status.UNAVAILABLE
    assert state.rights_confirmed_at == unchanged


@pytest.fixture
def aged_admins(make_synced_admins):
    """100 admins confirmed 1..100 hours ago, 2 never confirmed, and a user whose last answer
    named no domain and a plain user, whom the measure leaves out."""
    now = timezone.now()
    users = make_synced_admins(102)
    for age, user in enumerate(users[:100], start=1):
        EntitlementSyncState.objects.filter(user=user).update(rights_confirmed_at=now - age * HOUR)
    EntitlementSyncState.objects.filter(user__in=users[100:]).update(rights_confirmed_at=None)
    [told_none] = make_synced_admins(1, source=MailDomainAccess.Source.MANUAL)
    EntitlementSyncState.objects.filter(user=told_none).update(
        entitled_domains=[], rights_confirmed_at=now - 1000 * HOUR
    )
    User.objects.create_user(email="nobody@example.org")
    return now


def test_the_freshness_counts_percentiles_and_stale_admins(aged_admins):
    freshness = admin_freshness(now=aged_admins, interval=30 * HOUR)

    assert freshness.admins == 102
    assert freshness.never_confirmed == 2
    # Nearest ranks of the confirmation times, oldest first: rank 50 of 0..99 is 50 h old,
    # rank 1 (the 1st percentile of times, the 99th of ages) 99 h.
    assert freshness.p50_age == pytest.approx(50 * 3600, abs=1)
    assert freshness.p99_age == pytest.approx(99 * 3600, abs=1)
    assert freshness.max_age == pytest.approx(100 * 3600, abs=1)
    # Over 30 h: ages 31..100 and the two never confirmed; over 60 h: 61..100 and those two.
    assert freshness.older_than_one_interval == 72
    assert freshness.older_than_two_intervals == 42


def test_the_freshness_reads_the_admins_partial_index_without_sorting_them(aged_admins):
    with CaptureQueriesContext(connection) as queries:
        admin_freshness(now=aged_admins, interval=30 * HOUR)

    # A table this small is scanned whatever its indexes: forbid that, as a million rows do.
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            for query in queries.captured_queries:
                assert "JOIN" not in query["sql"]
                cursor.execute("EXPLAIN " + query["sql"])
                plan = "\n".join(row[0] for row in cursor.fetchall())
                assert "Seq Scan" not in plan, plan
                assert "syncstate_admin_confirmed" in plan, plan
        finally:
            cursor.execute("RESET enable_seqscan")


def test_an_admin_whose_answers_now_fail_stays_measured_and_ages(admin, deploycenter_backend):
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    confirmed = _confirmed_at(admin)
    deploycenter_backend.fail_with(503)
    sync_user_entitlements(user_id=admin.pk, trigger="periodic")

    later = confirmed + 3 * HOUR
    freshness = admin_freshness(now=later, interval=HOUR)
    assert freshness.admins == 1
    assert freshness.max_age == pytest.approx(3 * 3600)
    assert freshness.older_than_two_intervals == 1


def test_no_admin_no_ages(db):
    freshness = admin_freshness(now=timezone.now(), interval=HOUR)

    assert (freshness.admins, freshness.p50_age, freshness.max_age) == (0, None, None)
