"""core/api/urls.py: the API's public paths, each served by its view (docs/api.md)."""

import uuid

import pytest
from django.urls import resolve, reverse

from core.api import views

ID, OTHER_ID = uuid.uuid4(), uuid.uuid4()


# name, its arguments, the path clients use, the view.
ROUTES = [
    ("config", {}, "/api/v1.0/config/", views.ConfigView),
    ("users-me", {}, "/api/v1.0/users/me/", views.UserMeView),
    (
        "admin-maildomains",
        {},
        "/api/v1.0/admin/maildomains/",
        views.AdminMailDomainListCreateView,
    ),
    (
        "maildomain-accesses",
        {"maildomain_id": ID},
        f"/api/v1.0/maildomains/{ID}/accesses/",
        views.MailDomainAccessListCreateView,
    ),
    (
        "maildomain-access-detail",
        {"maildomain_id": ID, "pk": OTHER_ID},
        f"/api/v1.0/maildomains/{ID}/accesses/{OTHER_ID}/",
        views.MailDomainAccessDetailView,
    ),
    (
        "provisioning-maildomains",
        {},
        "/api/v1.0/provisioning/maildomains/",
        views.ProvisioningView,
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "path", "view"), ROUTES, ids=[r[0] for r in ROUTES])
def test_each_route_has_its_public_path_and_view(name, kwargs, path, view):
    assert reverse(name, kwargs=kwargs) == path
    match = resolve(path)
    assert match.func.view_class is view
    assert match.kwargs == kwargs


def test_a_domain_id_that_is_not_a_uuid_matches_no_route(api_client, db):
    response = api_client.get("/api/v1.0/maildomains/42/accesses/")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}
