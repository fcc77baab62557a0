"""core/api/handlers.py: Django's 404 and 500 answer JSON under /api/, Django's pages elsewhere."""

import pytest
from django.test import Client, RequestFactory

from core.api import handlers
from tests.factories import UserFactory
from tests.support.database import DATABASE_FAILURE_MARKERS


def test_unknown_api_path_is_a_json_404(api_client, db):
    response = api_client.get("/api/v1.0/nothing-here/")

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


def test_unknown_path_outside_the_api_keeps_django_404_page(client, db):
    response = client.get("/nothing-here/")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/api/v1.0/users/me/", "application/json"), ("/admin/", "text/html")],
)
def test_server_error_handler_answers_json_only_under_the_api(path, content_type):
    response = handlers.server_error(RequestFactory().get(path))

    assert response.status_code == 500
    assert response["Content-Type"].startswith(content_type)
    if content_type == "application/json":
        assert response.content == b'{"detail": "Internal server error."}'


def test_django_uses_the_project_handlers():
    from messages import urls

    assert urls.handler404 == "core.api.handlers.page_not_found"
    assert urls.handler500 == "core.api.handlers.server_error"


def test_database_failure_outside_the_api_shows_no_traceback(database_killed_once, settings):
    settings.DEBUG = False
    client = Client(raise_request_exception=False)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    database_killed_once()

    response = client.get("/admin/")

    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
    for marker in DATABASE_FAILURE_MARKERS:
        assert marker not in response.content.decode()
