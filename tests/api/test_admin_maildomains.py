"""/api/v1.0/admin/maildomains/: list administered domains; staff create them behind a flag."""

import pytest
from rest_framework.test import APIClient

from core.models import MailDomain, MailDomainAccess
from tests.factories import MailDomainAccessFactory, MailDomainFactory

URL = "/api/v1.0/admin/maildomains/"


@pytest.fixture
def staff_client(user, user_client):
    user.is_staff = True
    user.save()
    return user_client


def test_anonymous_is_refused(api_client, db):
    assert api_client.get(URL).status_code == 403
    assert api_client.post(URL, {"name": "new.example.org"}, format="json").status_code == 403


def test_lists_only_domains_the_user_administers(user_client, user):
    beta = MailDomainAccessFactory(user=user, maildomain__name="beta.example.org").maildomain
    alpha = MailDomainAccessFactory(
        user=user,
        maildomain__name="alpha.example.org",
        source=MailDomainAccess.Source.ENTITLEMENTS,
    ).maildomain
    MailDomainAccessFactory(maildomain__name="someone-else.example.org")
    MailDomainFactory(name="nobody.example.org")

    response = user_client.get(URL)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [item["name"] for item in body["results"]] == ["alpha.example.org", "beta.example.org"]
    assert body["results"][0] == {
        "id": str(alpha.id),
        "name": "alpha.example.org",
        "custom_attributes": {},
        "created_at": alpha.created_at.isoformat().replace("+00:00", "Z"),
        "updated_at": alpha.updated_at.isoformat().replace("+00:00", "Z"),
    }
    assert body["results"][1]["id"] == str(beta.id)


def test_user_without_domains_gets_an_empty_list(user_client):
    assert user_client.get(URL).json()["results"] == []


def test_staff_creates_a_domain_and_becomes_its_manual_admin(staff_client, user, settings):
    settings.FEATURE_MAILDOMAIN_CREATE = True

    response = staff_client.post(URL, {"name": "  New.Example.ORG "}, format="json")

    assert response.status_code == 201
    assert response.json()["name"] == "new.example.org"
    maildomain = MailDomain.objects.get(name="new.example.org")
    assert str(maildomain.id) == response.json()["id"]
    access = MailDomainAccess.objects.get(maildomain=maildomain)
    assert (access.user, access.role, access.source) == (user, "admin", "manual")
    assert [d["name"] for d in staff_client.get(URL).json()["results"]] == ["new.example.org"]


def test_create_refused_when_feature_is_off(staff_client, settings):
    settings.FEATURE_MAILDOMAIN_CREATE = False

    response = staff_client.post(URL, {"name": "new.example.org"}, format="json")

    assert response.status_code == 403
    assert response.json() == {"detail": "Creating mail domains is disabled on this instance."}
    assert not MailDomain.objects.exists()


def test_listing_still_works_when_feature_is_off(user_client, user, settings):
    settings.FEATURE_MAILDOMAIN_CREATE = False
    MailDomainAccessFactory(user=user)

    assert user_client.get(URL).json()["count"] == 1


def test_non_staff_cannot_create(user_client, settings):
    settings.FEATURE_MAILDOMAIN_CREATE = True

    response = user_client.post(URL, {"name": "new.example.org"}, format="json")

    assert response.status_code == 403
    assert response.json() == {"detail": "Only staff members may create mail domains."}
    assert not MailDomain.objects.exists()


@pytest.mark.parametrize(
    "name", ["not a domain", "localhost", "-bad.example.org", "exa_mple.org", "münster.de", ""]
)
def test_invalid_name_is_a_400_naming_the_field(staff_client, name):
    response = staff_client.post(URL, {"name": name}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["name"]
    assert not MailDomain.objects.exists()


def test_missing_name_is_a_400(staff_client):
    response = staff_client.post(URL, {}, format="json")

    assert response.status_code == 400
    assert response.json() == {"name": ["This field is required."]}


def test_duplicate_name_is_a_400(staff_client):
    MailDomainFactory(name="taken.example.org")

    response = staff_client.post(URL, {"name": "TAKEN.example.org"}, format="json")

    assert response.status_code == 400
    assert response.json() == {"name": ["A mail domain with this name already exists."]}
    assert MailDomain.objects.count() == 1
    assert not MailDomainAccess.objects.exists()


def test_session_writes_need_the_csrf_token(user, settings):
    user.is_staff = True
    user.save()
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)

    response = client.post(URL, {"name": "new.example.org"}, format="json")

    assert response.status_code == 403
    assert response.json()["detail"].startswith("CSRF Failed")
    assert not MailDomain.objects.exists()
