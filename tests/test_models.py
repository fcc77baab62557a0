"""core/models.py: what the tables themselves guarantee, on PostgreSQL (normalised names and
e-mails, one access per user and domain, one pending hold, a trail that outlives its rows), and
a sync's life on its state row: running and served, as the model answers for one row and its
queryset selects in SQL, the same for every case."""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.models import (
    EntitlementSyncState,
    HeldRevocation,
    MailDomain,
    MailDomainAccess,
    User,
)
from tests.factories import (
    AccessAuditEntryFactory,
    EntitlementSyncStateFactory,
    MailDomainAccessFactory,
    MailDomainFactory,
    UserFactory,
)


def _refused(create) -> bool:
    """Whether the database refuses the write (inside a savepoint, so the test goes on)."""
    try:
        with transaction.atomic():
            create()
    except IntegrityError:
        return True
    return False


def test_a_users_email_is_stored_with_its_domain_part_lowered(db):
    user = User.objects.create_user("Jane.Doe@Example.ORG")

    assert User.objects.get(pk=user.pk).email == "Jane.Doe@example.org"
    assert not user.has_usable_password()


def test_two_spellings_of_one_email_are_one_user(db):
    UserFactory(email="jane@example.org")

    assert _refused(lambda: UserFactory(email="jane@EXAMPLE.org"))


def test_a_superuser_is_staff_and_has_a_password(db):
    admin = User.objects.create_superuser("root@example.org", password="a long password")

    assert (admin.is_staff, admin.is_superuser) == (True, True)
    assert admin.check_password("a long password")


def test_a_domain_name_is_stored_normalised(db):
    assert MailDomainFactory(name="New.Example.ORG.").name == "new.example.org"


def test_the_database_refuses_a_domain_name_that_is_not_lower_case(db):
    maildomain = MailDomainFactory(name="lower.example.org")

    # update() skips save(): the table's own check constraint is what refuses it.
    assert _refused(
        lambda: MailDomain.objects.filter(pk=maildomain.pk).update(name="Lower.example.org")
    )


def test_a_user_has_at_most_one_access_per_domain(db):
    access = MailDomainAccessFactory(source=MailDomainAccess.Source.MANUAL)

    assert _refused(
        lambda: MailDomainAccessFactory(
            user=access.user,
            maildomain=access.maildomain,
            source=MailDomainAccess.Source.ENTITLEMENTS,
        )
    )


def test_one_revocation_is_held_pending_once(db):
    user = UserFactory()
    HeldRevocation.objects.create(user=user, maildomain_name="a.example.org")

    assert _refused(
        lambda: HeldRevocation.objects.create(user=user, maildomain_name="a.example.org")
    )


def test_a_resolved_hold_leaves_room_for_a_new_one(db):
    user = UserFactory()
    HeldRevocation.objects.create(
        user=user,
        maildomain_name="a.example.org",
        resolution=HeldRevocation.Resolution.DISCARDED,
    )

    HeldRevocation.objects.create(user=user, maildomain_name="a.example.org")

    assert HeldRevocation.objects.filter(resolution=HeldRevocation.Resolution.PENDING).count() == 1


def test_the_audit_trail_outlives_the_user_and_the_domain(db):
    access = MailDomainAccessFactory()
    entry = AccessAuditEntryFactory(user=access.user, maildomain_name=access.maildomain.name)

    access.maildomain.delete()
    access.user.delete()

    entry.refresh_from_db()
    assert (entry.user, entry.maildomain_name) == (None, access.maildomain.name)


def test_a_users_sync_state_goes_with_the_user(db):
    state = EntitlementSyncStateFactory()

    state.user.delete()

    assert not EntitlementSyncState.objects.exists()


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: MailDomainFactory(name="shown.example.org"), "shown.example.org"),
        (lambda: UserFactory(email="shown@example.org"), "shown@example.org"),
    ],
    ids=["domain", "user"],
)
def test_a_row_reads_as_its_name(db, make, text):
    assert str(make()) == text


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
