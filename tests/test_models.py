"""core/models.py: what the tables themselves guarantee, on PostgreSQL (normalised names and
e-mails, one access per user and domain, one pending hold, a trail that outlives its rows); a
sync's life on its state row is in test_querysets.py."""

import pytest
from django.db import IntegrityError, transaction

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
