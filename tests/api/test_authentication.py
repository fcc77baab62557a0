"""core/api/authentication.py: DeployCenter's bearer key on the provisioning API."""

import hmac

import pytest
from rest_framework.test import APIClient

from core.models import MailDomain
from tests.api.endpoints import (
    PROVISIONING_KEY,
    PROVISIONING_REFUSED,
    PROVISIONING_URL,
)
from tests.factories import UserFactory


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Bearer {PROVISIONING_KEY}",
    ],
    ids=["no-header", "empty-header", "scheme-only", "empty-key", "any-key"],
)
def test_refused_when_no_key_is_configured(db, settings, authorization):
    settings.PROVISIONING_API_KEY = ""
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)

    response = client.post(PROVISIONING_URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 403
    assert response.json() == PROVISIONING_REFUSED
    assert not MailDomain.objects.exists()


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer ",
        "Bearer wrong-key",
        f"Bearer {PROVISIONING_KEY.upper()}",
        f"Bearer {PROVISIONING_KEY.lower()}",
        f"Bearer {PROVISIONING_KEY}x",
        f"Bearer {PROVISIONING_KEY[:-1]}",
        f"Bearer x{PROVISIONING_KEY}",
        f"bearer {PROVISIONING_KEY}",
        f"BEARER {PROVISIONING_KEY}",
        f"Token {PROVISIONING_KEY}",
        f"Basic {PROVISIONING_KEY}",
        PROVISIONING_KEY,
        f"Bearer{PROVISIONING_KEY}",
        f"Bearer {PROVISIONING_KEY} {PROVISIONING_KEY}",
        "Bearer clé-accentuée",
    ],
    ids=[
        "no-header",
        "empty-header",
        "empty-key",
        "wrong-key",
        "key-upper-case",
        "key-lower-case",
        "key-longer",
        "key-shorter",
        "key-prefixed",
        "scheme-lower-case",
        "scheme-upper-case",
        "scheme-token",
        "scheme-basic",
        "no-scheme",
        "no-space",
        "key-twice",
        "non-ascii",
    ],
)
def test_refused_with_a_wrong_header(db, provisioning_key, authorization):
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)

    response = client.post(PROVISIONING_URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 403
    assert response.json() == PROVISIONING_REFUSED
    assert "WWW-Authenticate" not in response.headers
    assert not MailDomain.objects.exists()


def test_a_logged_in_staff_session_is_not_enough(db, provisioning_key):
    client = APIClient()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    response = client.post(PROVISIONING_URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 403
    assert not MailDomain.objects.exists()


def test_right_key_is_accepted_without_csrf_token(deploycenter):
    response = deploycenter.post(PROVISIONING_URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 200
    assert MailDomain.objects.filter(name="a.example.org").exists()


def test_key_is_compared_with_hmac_compare_digest_on_bytes(deploycenter, monkeypatch):
    compared = []
    real_compare_digest = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    deploycenter.post(PROVISIONING_URL, {"domains": ["a.example.org"]}, format="json")

    assert compared == [(PROVISIONING_KEY.encode(), PROVISIONING_KEY.encode())]


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "x",
        PROVISIONING_KEY[:-1],
        PROVISIONING_KEY + "x",
        "x" + PROVISIONING_KEY[1:],
        PROVISIONING_KEY[:-1] + "x",
        PROVISIONING_KEY.upper(),
        "y" * 200,
    ],
    ids=[
        "empty",
        "one-char",
        "shorter",
        "longer",
        "first-char-wrong",
        "last-char-wrong",
        "upper-case",
        "very-long",
    ],
)
def test_every_wrong_key_goes_through_the_same_comparison(
    db, provisioning_key, monkeypatch, presented
):
    # No check of our own on the key's length or content may answer before compare_digest:
    # how long a refusal takes must not depend on how much of the key was right.
    compared = []
    real_compare_digest = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {presented}")

    response = client.post(PROVISIONING_URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 403
    assert compared == [(presented.encode(), PROVISIONING_KEY.encode())]
