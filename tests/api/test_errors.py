"""Errors never leak exception text: DRF views, Django's own 404/500, malformed bodies."""

import psycopg
import pytest
from django.db import connection
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from core.api import handlers
from core.api import serializers as api_serializers
from tests.factories import UserFactory


def test_unhandled_error_in_a_view_is_a_generic_500(user_client, monkeypatch, caplog):
    def explode(*, user):
        raise RuntimeError("secret detail: password=hunter2")

    monkeypatch.setattr(api_serializers, "get_sync_summary", explode)

    response = user_client.get("/api/v1.0/users/me/")

    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error."}
    assert "hunter2" not in response.content.decode()
    # The operator still gets the traceback in the logs.
    assert "RuntimeError" in caplog.text


def test_malformed_json_is_a_400_without_the_decoder_message(user_client, user):
    user.is_staff = True
    user.save()

    response = user_client.generic(
        "POST", "/api/v1.0/admin/maildomains/", '{"name": ', content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json() == {"detail": "Request body is not valid JSON."}


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


# --- A real failure: the database connection dies under a request --------------------------

DATABASE_FAILURE_MARKERS = (
    "OperationalError",
    "InterfaceError",
    "terminat",
    "connection",
    "psycopg",
    "Traceback",
    'File "',
    "SELECT",
)


def _kill_database_connection() -> None:
    """Terminate this process's PostgreSQL session from another one, as a crash or a failover
    would: the next query of the request fails for real."""
    connection.ensure_connection()
    backend_pid = connection.connection.info.backend_pid
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", [backend_pid])


@pytest.fixture
def database_killed_once(transactional_db):
    """Yields a function that kills the connection; Django reconnects for the teardown."""
    yield _kill_database_connection
    connection.close()


def _assert_generic_500(response) -> None:
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Internal server error."}
    for marker in DATABASE_FAILURE_MARKERS:
        assert marker not in response.content.decode()


@pytest.mark.parametrize("debug", [False, True], ids=["debug-off", "debug-on"])
def test_database_failure_in_provisioning_is_a_generic_500(
    database_killed_once, settings, debug, caplog
):
    settings.DEBUG = debug
    settings.PROVISIONING_API_KEY = "k3y"
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION="Bearer k3y")
    database_killed_once()

    response = client.post(
        "/api/v1.0/provisioning/maildomains/", {"domains": ["a.example.org"]}, format="json"
    )

    _assert_generic_500(response)
    # The operator gets the real error in the logs.
    assert "OperationalError" in caplog.text


def test_database_failure_while_loading_the_session_is_a_generic_500(database_killed_once):
    client = APIClient(raise_request_exception=False)
    client.force_login(UserFactory())
    database_killed_once()

    response = client.get("/api/v1.0/users/me/")

    _assert_generic_500(response)


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
