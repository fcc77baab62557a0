"""Errors never leak exception text: DRF views, Django's own 404/500, malformed bodies."""

import pytest
from django.test import RequestFactory

from core.api import handlers
from core.api import serializers as api_serializers


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
