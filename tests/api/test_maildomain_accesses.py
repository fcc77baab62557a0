"""/api/v1.0/maildomains/{id}/accesses/: a domain's admins list, add and remove accesses."""

import uuid

import pytest

from core.models import MailDomainAccess
from tests.factories import MailDomainAccessFactory, MailDomainFactory, UserFactory

NOT_FOUND = {"detail": "No mail domain with this id among those you administer."}


def list_url(maildomain_id) -> str:
    return f"/api/v1.0/maildomains/{maildomain_id}/accesses/"


def detail_url(maildomain_id, access_id) -> str:
    return f"/api/v1.0/maildomains/{maildomain_id}/accesses/{access_id}/"


@pytest.fixture
def maildomain(user):
    """A domain that `user` administers (manual access)."""
    return MailDomainAccessFactory(user=user, maildomain__name="admin.example.org").maildomain


@pytest.fixture
def other_access(maildomain):
    return MailDomainAccessFactory(
        maildomain=maildomain,
        user__email="zed@example.org",
        source=MailDomainAccess.Source.ENTITLEMENTS,
    )


def test_admin_lists_the_domain_accesses(user_client, user, maildomain, other_access):
    MailDomainAccessFactory()  # another domain's access, not listed

    response = user_client.get(list_url(maildomain.id))

    assert response.status_code == 200
    results = response.json()["results"]
    assert [(a["user"]["email"], a["source"]) for a in results] == [
        (user.email, "manual"),
        ("zed@example.org", "entitlements"),
    ]
    assert results[1] == {
        "id": str(other_access.id),
        "user": {
            "id": str(other_access.user.id),
            "email": "zed@example.org",
            "full_name": other_access.user.full_name,
        },
        "role": "admin",
        "source": "entitlements",
        "created_at": other_access.created_at.isoformat().replace("+00:00", "Z"),
        "updated_at": other_access.updated_at.isoformat().replace("+00:00", "Z"),
    }


def test_admin_retrieves_one_access(user_client, maildomain, other_access):
    response = user_client.get(detail_url(maildomain.id, other_access.id))

    assert response.status_code == 200
    assert response.json()["id"] == str(other_access.id)


def test_access_of_another_domain_is_not_found_through_this_one(user_client, maildomain):
    foreign = MailDomainAccessFactory()

    response = user_client.get(detail_url(maildomain.id, foreign.id))

    assert response.status_code == 404
    assert user_client.delete(detail_url(maildomain.id, foreign.id)).status_code == 404
    assert MailDomainAccess.objects.filter(id=foreign.id).exists()


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
            response = user_client.get(list_url(maildomain_id))
        elif method == "post":
            response = user_client.post(
                list_url(maildomain_id), {"user": str(foreign.user.id)}, format="json"
            )
        elif method == "retrieve":
            response = user_client.get(detail_url(maildomain_id, foreign.id))
        else:
            response = user_client.delete(detail_url(maildomain_id, foreign.id))

        assert response.status_code == 404
        assert response.json() == NOT_FOUND
    assert MailDomainAccess.objects.count() == 1


def test_anonymous_is_refused(api_client, maildomain):
    assert api_client.get(list_url(maildomain.id)).status_code == 403


def test_staff_who_is_not_admin_of_the_domain_gets_404(user_client, user):
    user.is_staff = True
    user.save()
    foreign = MailDomainAccessFactory()

    assert user_client.get(list_url(foreign.maildomain.id)).status_code == 404


def test_malformed_domain_id_is_a_json_404(user_client, maildomain):
    response = user_client.get("/api/v1.0/maildomains/not-a-uuid/accesses/")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize("by", ["user", "email"])
def test_admin_adds_a_manual_access(user_client, maildomain, settings, by):
    settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = True
    newcomer = UserFactory(email="New.Person@Example.ORG")
    identity = {"user": str(newcomer.id)} if by == "user" else {"email": "New.Person@example.org"}

    response = user_client.post(list_url(maildomain.id), identity, format="json")

    assert response.status_code == 201
    access = MailDomainAccess.objects.get(maildomain=maildomain, user=newcomer)
    assert (access.role, access.source) == ("admin", "manual")
    assert response.json()["id"] == str(access.id)
    assert response.json()["user"]["email"] == "New.Person@example.org"


def test_source_cannot_be_chosen_by_the_caller(user_client, maildomain):
    newcomer = UserFactory()

    response = user_client.post(
        list_url(maildomain.id),
        {"user": str(newcomer.id), "source": "entitlements"},
        format="json",
    )

    assert response.status_code == 201
    assert response.json()["source"] == "manual"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"user": str(uuid.UUID(int=1))}, {"user": ["No user with this id or email."]}),
        ({"email": "nobody@example.org"}, {"email": ["No user with this id or email."]}),
        ({}, {"user": ["Give exactly one of `user` (an id) or `email`."]}),
        ({"user": "not-a-uuid"}, {"user": ["Must be a valid UUID."]}),
        ({"email": "not an email"}, {"email": ["Enter a valid email address."]}),
        (
            {"email": "a@example.org", "user": str(uuid.UUID(int=1))},
            {"user": ["Give exactly one of `user` (an id) or `email`."]},
        ),
    ],
)
def test_bad_create_requests_are_400_with_a_clear_body(user_client, maildomain, payload, expected):
    response = user_client.post(list_url(maildomain.id), payload, format="json")

    assert response.status_code == 400
    assert response.json() == expected
    assert MailDomainAccess.objects.count() == 1


def test_bad_role_is_a_400(user_client, maildomain):
    newcomer = UserFactory()

    response = user_client.post(
        list_url(maildomain.id), {"user": str(newcomer.id), "role": "owner"}, format="json"
    )

    assert response.status_code == 400
    assert response.json() == {"role": ['"owner" is not a valid choice.']}


def test_duplicate_access_is_a_400(user_client, maildomain, other_access):
    response = user_client.post(
        list_url(maildomain.id), {"user": str(other_access.user.id)}, format="json"
    )

    assert response.status_code == 400
    assert response.json() == {"user": ["This user already has an access to this mail domain."]}
    other_access.refresh_from_db()
    assert other_access.source == "entitlements"


def test_admin_deletes_an_access(user_client, maildomain, other_access, settings):
    settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = True

    response = user_client.delete(detail_url(maildomain.id, other_access.id))

    assert response.status_code == 204
    assert not MailDomainAccess.objects.filter(id=other_access.id).exists()


def test_create_and_delete_refused_when_feature_is_off(
    user_client, maildomain, other_access, settings
):
    settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = False
    newcomer = UserFactory()
    refused = {"detail": "Managing mail domain accesses is disabled on this instance."}

    created = user_client.post(list_url(maildomain.id), {"user": str(newcomer.id)}, format="json")
    deleted = user_client.delete(detail_url(maildomain.id, other_access.id))

    assert (created.status_code, created.json()) == (403, refused)
    assert (deleted.status_code, deleted.json()) == (403, refused)
    assert MailDomainAccess.objects.count() == 2
    # Reading stays open to admins.
    assert user_client.get(list_url(maildomain.id)).status_code == 200
    assert user_client.get(detail_url(maildomain.id, other_access.id)).status_code == 200


def test_admin_of_one_domain_cannot_manage_another(user_client, user):
    MailDomainAccessFactory(user=user)
    foreign_domain = MailDomainFactory()

    response = user_client.post(list_url(foreign_domain.id), {"user": str(user.id)}, format="json")

    assert response.status_code == 404
    assert not MailDomainAccess.objects.filter(maildomain=foreign_domain).exists()
