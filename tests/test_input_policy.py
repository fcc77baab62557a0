"""One input policy: the same domain name gives the same result at every door (provisioning,
domain creation, upstream answers, the model, the command line); provisioning takes `domains`
as a list or a comma-separated string, refuses duplicate keys, bounds `custom_attributes`, and
parses its Authorization header exactly as docs/api.md says."""

import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.urls import reverse
from rest_framework.test import APIClient

from core.entitlements.backends.base import UpstreamAnswer
from core.models import MailDomain, User
from core.validators import clean_domain_name

URL = "/api/v1.0/provisioning/maildomains/"
KEY = "k" * 43
REFUSED = {"detail": "Invalid or missing provisioning API key."}

# raw name -> what every door stores or compares, or None when every door refuses it.
NAMES = {
    "Alpha.Example.ORG.": "alpha.example.org",
    "beta.example.org": "beta.example.org",
    "a.bc": "a.bc",
    "\u212aelvin.example.org": None,  # str.lower() makes it kelvin.example.org
    "localhost": None,
    "example.a": None,
    "example.org..": None,
}


@pytest.fixture
def deploycenter(db, settings):
    settings.PROVISIONING_API_KEY = KEY
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {KEY}")
    return client


def provision(client, body):
    return client.post(URL, json.dumps(body), content_type="application/json")


@pytest.mark.parametrize(("raw", "expected"), list(NAMES.items()), ids=repr)
def test_every_door_gives_the_same_name(deploycenter, raw, expected):
    # The shared normaliser.
    if expected:
        assert clean_domain_name(raw) == expected
    # Provisioning.
    answer = provision(deploycenter, {"domains": [raw]}).json()
    assert answer["created"] == ([expected] if expected else [])
    MailDomain.objects.all().delete()
    # Domain creation.
    staff = APIClient()
    staff.force_login(User.objects.create_user(email="staff@example.org", is_staff=True))
    response = staff.post("/api/v1.0/admin/maildomains/", {"name": raw}, format="json")
    assert response.status_code == (201 if expected else 400)
    assert list(MailDomain.objects.values_list("name", flat=True)) == (
        [expected] if expected else []
    )
    # Upstream answers.
    if expected:
        assert UpstreamAnswer.authoritative([raw]).domains == (expected,)
    else:
        with pytest.raises(ValueError):
            UpstreamAnswer.authoritative([raw])
    # The command line finds the stored domain by any spelling the normaliser maps to it.
    if expected:
        out = io.StringIO()
        call_command("sync_entitlements", "--domain", raw, "--dry-run", stdout=out)
        # Found: its one admin (the creator) is checked.
        assert "Dry run: 1 user checked, 0 would change." in out.getvalue()


def test_the_model_never_lowers_a_kelvin_sign_into_a_k(db):
    MailDomain.objects.create(name="Alpha.example.org.")
    assert MailDomain.objects.filter(name="alpha.example.org").exists()

    # PostgreSQL's lower() does map it: the lower-case constraint refuses the name.
    with pytest.raises(IntegrityError), transaction.atomic():
        MailDomain.objects.create(name="\u212aelvin.example.org")

    assert not MailDomain.objects.filter(name="kelvin.example.org").exists()


def test_the_command_never_finds_kelvin_for_a_kelvin_sign(db):
    MailDomain.objects.create(name="kelvin.example.org")

    with pytest.raises(CommandError, match="No mail domain"):
        call_command("sync_entitlements", "--domain", "\u212aelvin.example.org", "--dry-run")


def test_domains_may_be_one_comma_separated_string(deploycenter):
    response = provision(deploycenter, {"domains": " Alpha.example.org, beta.example.org ,,"})

    assert response.status_code == 200
    assert response.json()["created"] == ["alpha.example.org", "beta.example.org"]


def test_duplicate_keys_are_refused(deploycenter):
    body = '{"domains": ["a.example.org"], "domains": ["b.example.org"]}'

    response = deploycenter.post(URL, body, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == {"detail": "Request body names a key twice in one object."}
    assert not MailDomain.objects.exists()


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_custom_attributes_too_deep_are_refused_and_the_deepest_allowed_render_in_the_admin(
    deploycenter, admin_client
):
    # Far past the 10 levels allowed, and far from the interpreter's recursion limit: 900 levels
    # reached it under pytest-xdist's deeper stack, and the parser's 400 for a body past the limit
    # is tests/api/test_parsers.py's.
    too_deep = provision(
        deploycenter, {"domains": ["a.example.org"], "custom_attributes": nested(500)}
    )

    assert too_deep.status_code == 400
    assert "10 levels" in too_deep.json()["custom_attributes"][0]
    assert not MailDomain.objects.exists()

    allowed = {"deep": nested(9), "big": "x" * (64 * 1024 - 100)}
    response = provision(deploycenter, {"domains": ["a.example.org"], "custom_attributes": allowed})
    assert response.status_code == 200, response.json()
    maildomain = MailDomain.objects.get()
    page = admin_client.get(reverse("admin:core_maildomain_change", args=[maildomain.pk]))
    assert page.status_code == 200


def test_custom_attributes_too_large_are_refused(deploycenter):
    response = provision(
        deploycenter, {"domains": ["a.example.org"], "custom_attributes": {"x": "y" * 70_000}}
    )

    assert response.status_code == 400
    assert "65536 bytes" in response.json()["custom_attributes"][0]


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer  {KEY}",
        f"Bearer {KEY} ",
        f"Bearer\t{KEY}",
        f" Bearer {KEY}",
        f"bearer {KEY}",
        "Bearer",
        "Bearer ",
        f"Bearer {KEY} {KEY}",
        "Bearer clé",
        "Bearer \ud800",
    ],
    ids=repr,
)
def test_the_authorization_header_is_exactly_bearer_space_key(db, settings, authorization):
    settings.PROVISIONING_API_KEY = KEY
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)

    response = provision(client, {"domains": ["a.example.org"]})

    assert response.status_code == 403
    assert response.json() == REFUSED
    assert not MailDomain.objects.exists()
