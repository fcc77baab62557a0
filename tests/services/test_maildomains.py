"""core/services/maildomains.py: creating domains and managing their accesses by hand."""

import pytest
from django.db import transaction

from core.models import MailDomain, MailDomainAccess
from core.services import (
    AlreadyExistsError,
    InvalidDomainNameError,
    create_maildomain,
    create_maildomain_access,
    delete_maildomain_access,
)
from tests.factories import MailDomainAccessFactory, MailDomainFactory, UserFactory


def test_a_new_domain_has_its_normalised_name_and_its_creator_as_manual_admin(db):
    creator = UserFactory()

    maildomain = create_maildomain(name="  New.Example.ORG. ", creator=creator)

    assert MailDomain.objects.get().name == maildomain.name == "new.example.org"
    access = MailDomainAccess.objects.get()
    assert (access.maildomain, access.user, access.role, access.source) == (
        maildomain,
        creator,
        MailDomainAccess.Role.ADMIN,
        MailDomainAccess.Source.MANUAL,
    )


@pytest.mark.parametrize("name", ["not a domain", "localhost", "münster.de", ""])
def test_an_invalid_name_is_refused_naming_the_field(db, name):
    with pytest.raises(InvalidDomainNameError) as refused:
        create_maildomain(name=name, creator=UserFactory())

    assert refused.value.field == "name"
    assert not MailDomain.objects.exists()


def test_a_taken_name_is_refused_and_the_callers_transaction_goes_on(db):
    MailDomainFactory(name="taken.example.org")
    creator = UserFactory()

    with transaction.atomic():
        with pytest.raises(AlreadyExistsError) as refused:
            create_maildomain(name="TAKEN.example.org", creator=creator)
        # The savepoint rolled back the failed insert only: the transaction still works.
        MailDomainFactory(name="other.example.org")

    assert refused.value.field == "name"
    assert sorted(MailDomain.objects.values_list("name", flat=True)) == [
        "other.example.org",
        "taken.example.org",
    ]
    assert not MailDomainAccess.objects.filter(user=creator).exists()


def test_a_hand_made_access_is_manual(db):
    maildomain, user = MailDomainFactory(), UserFactory()

    access = create_maildomain_access(maildomain=maildomain, user=user)

    assert (access.role, access.source) == (
        MailDomainAccess.Role.ADMIN,
        MailDomainAccess.Source.MANUAL,
    )


def test_a_second_access_for_the_same_user_and_domain_is_refused(db):
    existing = MailDomainAccessFactory(source=MailDomainAccess.Source.ENTITLEMENTS)

    with pytest.raises(AlreadyExistsError) as refused:
        create_maildomain_access(maildomain=existing.maildomain, user=existing.user)

    assert refused.value.field == "user"
    assert MailDomainAccess.objects.get() == existing


@pytest.mark.parametrize("source", list(MailDomainAccess.Source))
def test_any_access_can_be_removed_by_hand(db, source):
    access = MailDomainAccessFactory(source=source)

    delete_maildomain_access(access=access)

    assert not MailDomainAccess.objects.exists()
