"""core/selectors.py: the domain's read-only queries, on PostgreSQL."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core import selectors
from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomainAccess,
    SyncRun,
)
from tests.factories import (
    AccessAuditEntryFactory,
    EntitlementSyncStateFactory,
    MailDomainAccessFactory,
    MailDomainFactory,
    SyncRunFactory,
    UserFactory,
)

NOW = timezone.now()
GRACE = timedelta(seconds=120)


def _ago(seconds: float):
    return NOW - timedelta(seconds=seconds)


def test_a_user_never_asked_reads_never(db):
    assert selectors.get_sync_summary(user=UserFactory()) == selectors.SyncSummary(
        status="never", requested_at=None, finished_at=None
    )


def test_a_users_summary_is_their_state(db):
    state = EntitlementSyncStateFactory(status="unavailable")

    assert selectors.get_sync_summary(user=state.user) == selectors.SyncSummary(
        status="unavailable", requested_at=state.requested_at, finished_at=state.finished_at
    )


def test_administered_domains_are_the_users_admin_rows_by_name(db):
    user = UserFactory()
    beta = MailDomainAccessFactory(user=user, maildomain__name="beta.example.org").maildomain
    alpha = MailDomainAccessFactory(
        user=user,
        maildomain__name="alpha.example.org",
        source=MailDomainAccess.Source.ENTITLEMENTS,
    ).maildomain
    elsewhere = MailDomainAccessFactory(maildomain__name="other.example.org").maildomain

    assert list(selectors.maildomains_administered_by(user=user)) == [alpha, beta]
    assert selectors.get_administered_maildomain(user=user, maildomain_id=alpha.pk) == alpha
    assert selectors.get_administered_maildomain(user=user, maildomain_id=elsewhere.pk) is None


def test_a_domains_accesses_come_by_user_email(db):
    maildomain = MailDomainFactory()
    later = MailDomainAccessFactory(maildomain=maildomain, user__email="zed@example.org")
    first = MailDomainAccessFactory(maildomain=maildomain, user__email="ann@example.org")
    MailDomainAccessFactory()

    assert list(selectors.maildomain_accesses(maildomain=maildomain)) == [first, later]


def test_a_user_is_found_by_id_or_by_email_whatever_the_domain_parts_case(db):
    user = UserFactory(email="jane@example.org")

    assert selectors.find_user(user_id=user.pk) == user
    assert selectors.find_user(email="jane@EXAMPLE.ORG") == user
    assert selectors.find_user(email="Jane@example.org") is None
    assert selectors.find_user() is None


def test_entitled_users_are_those_whose_last_answer_named_the_domain(db):
    named = EntitlementSyncStateFactory(entitled_domains=["a.example.org", "b.example.org"])
    also = EntitlementSyncStateFactory(entitled_domains=["c.example.org"])
    # A name that only contains the one asked for is another domain.
    EntitlementSyncStateFactory(entitled_domains=["xa.example.org"])

    assert list(selectors.users_entitled_to("a.example.org")) == [named.user_id]
    assert set(selectors.states_entitled_to_any(["b.example.org", "c.example.org"])) == {
        named,
        also,
    }


@pytest.mark.parametrize(
    ("times", "outstanding"),
    [
        ({"requested_at": _ago(600), "started_at": None, "enqueued_at": None}, True),
        ({"requested_at": _ago(60), "started_at": _ago(600), "finished_at": _ago(590)}, True),
        # A task sent within the grace still carries the request.
        ({"requested_at": _ago(60), "started_at": None, "enqueued_at": _ago(60)}, False),
        ({"requested_at": _ago(600), "started_at": _ago(500), "finished_at": _ago(490)}, False),
        # Running since before the grace, never finished: its worker died.
        ({"requested_at": _ago(600), "started_at": _ago(500), "finished_at": None}, True),
        # Running for less than the grace: let it finish.
        ({"requested_at": _ago(90), "started_at": _ago(60), "finished_at": None}, False),
        ({"requested_at": None, "started_at": None}, False),
    ],
    ids=[
        "never-started",
        "requested-after-the-last-sync",
        "task-within-grace",
        "served",
        "died-unfinished",
        "still-running",
        "never-requested",
    ],
)
def test_outstanding_requests_are_those_no_sync_served_and_no_task_carries(db, times, outstanding):
    state = EntitlementSyncStateFactory(**times, last_trigger="login")

    found = list(selectors.outstanding_requests(now=NOW, grace=GRACE))

    assert found == ([(state.user_id, "login")] if outstanding else [])


def test_a_domains_resync_covers_its_admins_and_those_told_they_may_be(db):
    maildomain = MailDomainFactory(name="d.example.org")
    admin = MailDomainAccessFactory(maildomain=maildomain).user
    told = EntitlementSyncStateFactory(entitled_domains=["d.example.org"]).user
    MailDomainAccessFactory()

    assert set(selectors.users_of_domain(maildomain=maildomain)) == {admin.pk, told.pk}


@pytest.mark.parametrize(
    ("times", "serves"),
    [
        ({"requested_at": _ago(60), "started_at": _ago(30), "finished_at": None}, True),
        ({"requested_at": _ago(60), "started_at": _ago(30), "finished_at": _ago(90)}, True),
        ({"requested_at": _ago(30), "started_at": _ago(60), "finished_at": None}, False),
        ({"requested_at": _ago(60), "started_at": _ago(30), "finished_at": _ago(10)}, False),
        ({"requested_at": None, "started_at": _ago(30), "finished_at": None}, False),
    ],
    ids=[
        "running-since-the-request",
        "running-again-since-the-request",
        "started-before-the-request",
        "finished",
        "no-request",
    ],
)
def test_a_running_sync_serves_a_request_only_if_it_started_after_it(db, times, serves):
    state = EntitlementSyncStateFactory(**times)

    assert selectors.running_sync_serves_request(user_id=state.user_id) is serves


def test_a_user_without_a_state_has_no_sync_serving_them(db):
    assert selectors.running_sync_serves_request(user_id=UserFactory().pk) is False


def test_pending_holds_of_a_user_of_runs_and_their_count(db):
    run, other_run = SyncRunFactory(), SyncRunFactory()
    user = UserFactory()
    pending = HeldRevocation.objects.create(run=run, user=user, maildomain_name="a.example.org")
    released = HeldRevocation.objects.create(
        run=run,
        user=user,
        maildomain_name="b.example.org",
        resolution=HeldRevocation.Resolution.REVOKED,
    )
    elsewhere = HeldRevocation.objects.create(
        run=other_run, maildomain_name="c.example.org", user=UserFactory()
    )

    assert list(selectors.pending_held_revocations(user=user)) == [pending]
    assert set(selectors.pending_held_revocations()) == {pending, elsewhere}
    of_run = selectors.held_revocations_of_runs(SyncRun.objects.filter(pk=run.pk))
    assert set(of_run) == {pending, released}
    assert selectors.count_pending(of_run) == 1


def test_the_running_full_run_is_the_one_over_all_admins(db):
    SyncRunFactory(scope=SyncRun.Scope.DOMAIN, status=SyncRun.Status.RUNNING)
    SyncRunFactory(scope=SyncRun.Scope.ALL, status=SyncRun.Status.DONE)
    assert selectors.running_full_run() is None

    running = SyncRunFactory(scope=SyncRun.Scope.ALL, status=SyncRun.Status.RUNNING)

    assert selectors.running_full_run() == running


def test_error_codes_in_use_are_distinct_and_sorted(db):
    for code in ("timeout", "", "http_503", "timeout"):
        EntitlementSyncStateFactory(error_code=code)
    SyncRunFactory(error_code="configuration")

    assert selectors.error_codes_in_use(model=EntitlementSyncState) == ["http_503", "timeout"]
    assert selectors.error_codes_in_use(model=SyncRun) == ["configuration"]


def test_a_users_state_and_trail_are_theirs_only(db):
    state = EntitlementSyncStateFactory()
    first = AccessAuditEntryFactory(user=state.user)
    latest = AccessAuditEntryFactory(user=state.user)
    AccessAuditEntryFactory()
    # created_at is set on insert: an hour between the two, so the order cannot tie.
    AccessAuditEntry.objects.filter(pk=first.pk).update(created_at=_ago(3600))

    assert selectors.get_sync_state(user=state.user) == state
    assert selectors.get_sync_state(user=UserFactory()) is None
    assert list(selectors.audit_entries_of(user=state.user)) == [latest, first]
