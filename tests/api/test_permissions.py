"""core/api/permissions.py: feature flags, staff-only writes, a domain's admins only."""

import uuid

import pytest

from core.models import MailDomain, MailDomainAccess
from tests.api.endpoints import (
    MAILDOMAINS_URL,
    NOT_ADMINISTERED,
    access_url,
    accesses_url,
)
from tests.factories import MailDomainAccessFactory, MailDomainFactory, UserFactory


def test_create_refused_when_feature_is_off(staff_client, settings):
    settings.FEATURE_MAILDOMAIN_CREATE = False

    response = staff_client.post(MAILDOMAINS_URL, {"name": "new.example.org"}, format="json")

    assert response.status_code == 403
    assert response.json() == {"detail": "Creating mail domains is disabled on this instance."}
    assert not MailDomain.objects.exists()


def test_listing_still_works_when_feature_is_off(user_client, user, settings):
    settings.FEATURE_MAILDOMAIN_CREATE = False
    MailDomainAccessFactory(user=user)

    assert user_client.get(MAILDOMAINS_URL).json()["count"] == 1


def test_non_staff_cannot_create(user_client, settings):
    settings.FEATURE_MAILDOMAIN_CREATE = True

    response = user_client.post(MAILDOMAINS_URL, {"name": "new.example.org"}, format="json")

    assert response.status_code == 403
    assert response.json() == {"detail": "Only staff members may create mail domains."}
    assert not MailDomain.objects.exists()


@pytest.mark.parametrize("method", ["get", "post", "delete", "retrieve"])
@pytest.mark.parametrize("manage_accesses", [True, False])
def test_non_admin_gets_404_for_an_existing_domain_and_an_unknown_one(
    user_client, settings, method, manage_accesses
):
    """Non-admins cannot tell a domain they do not administer from one that does not exist,
    whatever the feature flag says."""
    settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = manage_accesses
    foreign = MailDomainAccessFactory()
    for maildomain_id in (foreign.maildomain.id, uuid.uuid4()):
        if method == "get":
            response = user_client.get(accesses_url(maildomain_id))
        elif method == "post":
            response = user_client.post(
                accesses_url(maildomain_id), {"user": str(foreign.user.id)}, format="json"
            )
        elif method == "retrieve":
            response = user_client.get(access_url(maildomain_id, foreign.id))
        else:
            response = user_client.delete(access_url(maildomain_id, foreign.id))

        assert response.status_code == 404
        assert response.json() == NOT_ADMINISTERED
    assert MailDomainAccess.objects.count() == 1


def test_staff_who_is_not_admin_of_the_domain_gets_404(user_client, user):
    user.is_staff = True
    user.save()
    foreign = MailDomainAccessFactory()

    assert user_client.get(accesses_url(foreign.maildomain.id)).status_code == 404


def test_create_and_delete_refused_when_feature_is_off(
    user_client, maildomain, other_access, settings
):
    settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = False
    newcomer = UserFactory()
    refused = {"detail": "Managing mail domain accesses is disabled on this instance."}

    created = user_client.post(
        accesses_url(maildomain.id), {"user": str(newcomer.id)}, format="json"
    )
    deleted = user_client.delete(access_url(maildomain.id, other_access.id))

    assert (created.status_code, created.json()) == (403, refused)
    assert (deleted.status_code, deleted.json()) == (403, refused)
    assert MailDomainAccess.objects.count() == 2
    # Reading stays open to admins.
    assert user_client.get(accesses_url(maildomain.id)).status_code == 200
    assert user_client.get(access_url(maildomain.id, other_access.id)).status_code == 200


def test_admin_of_one_domain_cannot_manage_another(user_client, user):
    MailDomainAccessFactory(user=user)
    foreign_domain = MailDomainFactory()

    response = user_client.post(
        accesses_url(foreign_domain.id), {"user": str(user.id)}, format="json"
    )

    assert response.status_code == 404
    assert not MailDomainAccess.objects.filter(maildomain=foreign_domain).exists()
