"""core/api/serializers.py: what each request body must be, and the 400 that says what is wrong."""

import uuid

import pytest

from core.models import MailDomain, MailDomainAccess
from tests.api.endpoints import (
    MAILDOMAINS_URL,
    PROVISIONING_URL,
    accesses_url,
    post_raw,
)
from tests.factories import UserFactory


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("not json", {"detail": "Request body is not valid JSON."}),
        ('{"domains": ["a.example.org"]', {"detail": "Request body is not valid JSON."}),
        ('{"domains": [NaN]}', {"detail": "Request body is not valid JSON."}),
        ("\xff\xfe", {"detail": "Request body is not valid JSON."}),
        ("[" * 100_000 + "]" * 100_000, {"detail": "Request body is not valid JSON."}),
        ("[]", {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}),
        ('"domains"', {"non_field_errors": ["Invalid data. Expected a dictionary, but got str."]}),
        ("null", {"non_field_errors": ["No data provided"]}),
        ("{}", {"domains": ["This field is required."]}),
        ('{"custom_attributes": {}}', {"domains": ["This field is required."]}),
        ('{"domains": " , ,"}', {"domains": ["This list may not be empty."]}),
        ('{"domains": {"a": 1}}', {"domains": ['Expected a list of items but got type "dict".']}),
        ('{"domains": null}', {"domains": ["This field may not be null."]}),
        ('{"domains": []}', {"domains": ["This list may not be empty."]}),
        ('{"domains": ["a.example.org", 42]}', {"domains": {"1": ["Must be a string."]}}),
        ('{"domains": [["a.example.org"]]}', {"domains": {"0": ["Must be a string."]}}),
        ('{"domains": [null]}', {"domains": {"0": ["This field may not be null."]}}),
        ('{"domains": [true]}', {"domains": {"0": ["Must be a string."]}}),
        (
            '{"domains": ["a.example.org"], "custom_attributes": []}',
            {"custom_attributes": ['Expected a dictionary of items but got type "list".']},
        ),
        (
            '{"domains": ["a.example.org"], "custom_attributes": "x"}',
            {"custom_attributes": ['Expected a dictionary of items but got type "str".']},
        ),
        (
            '{"domains": ["a.example.org"], "custom_attributes": null}',
            {"custom_attributes": ["This field may not be null."]},
        ),
        # PostgreSQL's jsonb refuses these: they once made a 500.
        (
            '{"domains": ["a.example.org"], "custom_attributes": {"siret": "1\\u00002"}}',
            {"custom_attributes": ["Must not contain null characters."]},
        ),
        (
            '{"domains": ["a.example.org"], "custom_attributes": {"\\u0000": 1}}',
            {"custom_attributes": ["Must not contain null characters."]},
        ),
        (
            '{"domains": ["a.example.org"], "custom_attributes": {"a": [{"b": "\\ud800"}]}}',
            {"custom_attributes": ["Must not contain lone surrogate characters."]},
        ),
        (
            '{"domains": ["a.example.org"], "custom_attributes": {"quota": 1e400}}',
            {"custom_attributes": ["Must not contain numbers too large for JSON."]},
        ),
    ],
    ids=[
        "not-json",
        "truncated-json",
        "nan",
        "not-utf8",
        "deeply-nested",
        "body-is-a-list",
        "body-is-a-string",
        "body-is-null",
        "empty-object",
        "domains-missing",
        "domains-a-string-of-blanks",
        "domains-an-object",
        "domains-null",
        "domains-empty",
        "item-a-number",
        "item-a-list",
        "item-null",
        "item-a-boolean",
        "attributes-a-list",
        "attributes-a-string",
        "attributes-null",
        "attributes-nul-in-value",
        "attributes-nul-in-key",
        "attributes-lone-surrogate",
        "attributes-infinite-number",
    ],
)
def test_bad_input_is_a_400_with_a_clear_body(deploycenter, body, expected):
    response = post_raw(deploycenter, body)

    assert response.status_code == 400
    assert response.json() == expected
    assert not MailDomain.objects.exists()


def test_empty_body_is_a_400(deploycenter):
    response = post_raw(deploycenter, "")

    assert response.status_code == 400
    assert response.json() == {"domains": ["This field is required."]}


def test_more_domains_than_the_maximum_is_a_400(deploycenter, settings):
    settings.PROVISIONING_MAX_DOMAINS = 3
    names = [f"d{i}.example.org" for i in range(4)]

    response = deploycenter.post(PROVISIONING_URL, {"domains": names}, format="json")

    assert response.status_code == 400
    assert response.json() == {"domains": ["At most 3 domains per request, got 4."]}
    assert not MailDomain.objects.exists()


def test_exactly_the_maximum_is_accepted(deploycenter, settings):
    settings.PROVISIONING_MAX_DOMAINS = 3
    names = [f"d{i}.example.org" for i in range(3)]

    response = deploycenter.post(PROVISIONING_URL, {"domains": names}, format="json")

    assert response.status_code == 200
    assert response.json()["created"] == names


@pytest.mark.parametrize(
    "name", ["not a domain", "localhost", "-bad.example.org", "exa_mple.org", "münster.de", ""]
)
def test_invalid_name_is_a_400_naming_the_field(staff_client, name):
    response = staff_client.post(MAILDOMAINS_URL, {"name": name}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["name"]
    assert not MailDomain.objects.exists()


def test_missing_name_is_a_400(staff_client):
    response = staff_client.post(MAILDOMAINS_URL, {}, format="json")

    assert response.status_code == 400
    assert response.json() == {"name": ["This field is required."]}


def test_source_cannot_be_chosen_by_the_caller(user_client, maildomain):
    newcomer = UserFactory()

    response = user_client.post(
        accesses_url(maildomain.id),
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
    response = user_client.post(accesses_url(maildomain.id), payload, format="json")

    assert response.status_code == 400
    assert response.json() == expected
    assert MailDomainAccess.objects.count() == 1


def test_bad_role_is_a_400(user_client, maildomain):
    newcomer = UserFactory()

    response = user_client.post(
        accesses_url(maildomain.id), {"user": str(newcomer.id), "role": "owner"}, format="json"
    )

    assert response.status_code == 400
    assert response.json() == {"role": ['"owner" is not a valid choice.']}
