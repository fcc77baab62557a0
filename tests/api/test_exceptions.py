"""core/api/exceptions.py: API error bodies never carry exception text or stack traces."""

import json

import pytest
from rest_framework.test import APIClient

from core.api import serializers as api_serializers
from core.models import MailDomain
from tests.api.endpoints import (
    post_raw,
)
from tests.factories import UserFactory
from tests.support.database import DATABASE_FAILURE_MARKERS


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


def test_body_larger_than_the_upload_limit_is_a_413(deploycenter, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    body = json.dumps({"domains": [f"d{i}.example.org" for i in range(10)]})

    response = post_raw(deploycenter, body)

    assert response.status_code == 413
    assert response.json() == {"detail": "Request body is too large."}
    assert not MailDomain.objects.exists()
