"""POST /api/v1.0/provisioning/maildomains/: DeployCenter's bearer key, bad input, results."""

import hmac
import json

import pytest
from rest_framework.test import APIClient

from core.models import MailDomain
from tests.factories import MailDomainFactory, UserFactory

URL = "/api/v1.0/provisioning/maildomains/"
KEY = "s3cret-Provisioning-key"
REFUSED = {"detail": "Invalid or missing provisioning API key."}


@pytest.fixture
def provisioning_key(settings):
    settings.PROVISIONING_API_KEY = KEY
    return KEY


@pytest.fixture
def deploycenter(db, provisioning_key):
    """A client presenting the right key, with CSRF checks on as a browser would have them."""
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {provisioning_key}")
    return client


def post_raw(client, body: str, content_type: str = "application/json"):
    return client.generic("POST", URL, body, content_type=content_type)


# --- The key ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Bearer {KEY}",
    ],
    ids=["no-header", "empty-header", "scheme-only", "empty-key", "any-key"],
)
def test_refused_when_no_key_is_configured(db, settings, authorization):
    settings.PROVISIONING_API_KEY = ""
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)

    response = client.post(URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 403
    assert response.json() == REFUSED
    assert not MailDomain.objects.exists()


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer ",
        "Bearer wrong-key",
        f"Bearer {KEY.upper()}",
        f"Bearer {KEY.lower()}",
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        f"Bearer x{KEY}",
        f"bearer {KEY}",
        f"BEARER {KEY}",
        f"Token {KEY}",
        f"Basic {KEY}",
        KEY,
        f"Bearer{KEY}",
        f"Bearer {KEY} {KEY}",
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

    response = client.post(URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 403
    assert response.json() == REFUSED
    assert "WWW-Authenticate" not in response.headers
    assert not MailDomain.objects.exists()


def test_a_logged_in_staff_session_is_not_enough(db, provisioning_key):
    client = APIClient()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    response = client.post(URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 403
    assert not MailDomain.objects.exists()


def test_right_key_is_accepted_without_csrf_token(deploycenter):
    response = deploycenter.post(URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 200
    assert MailDomain.objects.filter(name="a.example.org").exists()


def test_key_is_compared_with_hmac_compare_digest_on_bytes(deploycenter, monkeypatch):
    compared = []
    real_compare_digest = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    deploycenter.post(URL, {"domains": ["a.example.org"]}, format="json")

    assert compared == [(KEY.encode(), KEY.encode())]


@pytest.mark.parametrize(
    "presented",
    ["", "x", KEY[:-1], KEY + "x", "x" + KEY[1:], KEY[:-1] + "x", KEY.upper(), "y" * 200],
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

    response = client.post(URL, {"domains": ["a.example.org"]}, format="json")

    assert response.status_code == 403
    assert compared == [(presented.encode(), KEY.encode())]


def test_only_post_is_allowed(deploycenter):
    response = deploycenter.get(URL)

    assert response.status_code == 405
    assert response.json() == {"detail": 'Method "GET" not allowed.'}


# --- Bad input ------------------------------------------------------------------------------


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

    response = deploycenter.post(URL, {"domains": names}, format="json")

    assert response.status_code == 400
    assert response.json() == {"domains": ["At most 3 domains per request, got 4."]}
    assert not MailDomain.objects.exists()


def test_exactly_the_maximum_is_accepted(deploycenter, settings):
    settings.PROVISIONING_MAX_DOMAINS = 3
    names = [f"d{i}.example.org" for i in range(3)]

    response = deploycenter.post(URL, {"domains": names}, format="json")

    assert response.status_code == 200
    assert response.json()["created"] == names


def test_body_not_declared_as_json_is_a_415(deploycenter):
    response = post_raw(deploycenter, "domains=a.example.org", "application/x-www-form-urlencoded")

    assert response.status_code == 415
    assert response.json() == {
        "detail": 'Unsupported media type "application/x-www-form-urlencoded" in request.'
    }


def test_body_larger_than_the_upload_limit_is_a_413(deploycenter, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    body = json.dumps({"domains": [f"d{i}.example.org" for i in range(10)]})

    response = post_raw(deploycenter, body)

    assert response.status_code == 413
    assert response.json() == {"detail": "Request body is too large."}
    assert not MailDomain.objects.exists()


# --- What it does ---------------------------------------------------------------------------


def test_creates_missing_and_reports_existing_in_request_order(deploycenter):
    MailDomainFactory(name="old.example.org", custom_attributes={"siret": "1"})

    response = deploycenter.post(
        URL,
        {
            "domains": ["new-b.example.org", "old.example.org", "new-a.example.org"],
            "custom_attributes": {"siret": "2", "plan": ["a", "b"]},
        },
        format="json",
    )

    assert response.status_code == 200
    assert response.json() == {
        "created": ["new-b.example.org", "new-a.example.org"],
        "existing": ["old.example.org"],
        "errors": [],
    }
    attributes = dict(MailDomain.objects.values_list("name", "custom_attributes"))
    assert attributes == {
        "new-a.example.org": {"siret": "2", "plan": ["a", "b"]},
        "new-b.example.org": {"siret": "2", "plan": ["a", "b"]},
        "old.example.org": {"siret": "2", "plan": ["a", "b"]},
    }


def test_duplicates_and_mixed_case_are_normalised(deploycenter):
    response = deploycenter.post(
        URL,
        {"domains": ["Mixed.Example.ORG", " mixed.example.org ", "mixed.example.org\n"]},
        format="json",
    )

    assert response.json() == {"created": ["mixed.example.org"], "existing": [], "errors": []}
    assert list(MailDomain.objects.values_list("name", flat=True)) == ["mixed.example.org"]


def test_invalid_names_are_reported_with_a_generic_error(deploycenter):
    response = deploycenter.post(
        URL,
        {
            "domains": [
                "good.example.org",
                "bad_name.example.org",
                "",
                "localhost",
                "Bad_Name.example.org",
                "münster.de",
                "x" * 300 + ".org",
                "a..example.org",
            ]
        },
        format="json",
    )

    assert response.status_code == 200
    body = response.json()
    assert body["created"] == ["good.example.org"]
    assert body["errors"] == [
        {"domain": "bad_name.example.org", "error": "invalid domain name"},
        {"domain": "", "error": "invalid domain name"},
        {"domain": "localhost", "error": "invalid domain name"},
        {"domain": "münster.de", "error": "invalid domain name"},
        {"domain": "x" * 300 + ".org", "error": "invalid domain name"},
        {"domain": "a..example.org", "error": "invalid domain name"},
    ]
    assert list(MailDomain.objects.values_list("name", flat=True)) == ["good.example.org"]


def test_names_that_only_look_valid_are_refused(deploycenter):
    # A newline inside a label once passed the validator (`$` matches before a final "\n"),
    # and Unicode lowers the Kelvin sign to an ASCII "k": neither may create a domain.
    names = ["evil\n.example.org", "evil.example\n.org", "\u212aelvin.example.org"]

    response = deploycenter.post(URL, {"domains": names}, format="json")

    assert response.status_code == 200
    assert response.json() == {
        "created": [],
        "existing": [],
        "errors": [{"domain": name, "error": "invalid domain name"} for name in names],
    }
    assert not MailDomain.objects.exists()


def test_repeating_a_request_changes_nothing(deploycenter):
    payload = {
        "domains": ["one.example.org", "two.example.org", "bad_name"],
        "custom_attributes": {"siret": "123"},
    }
    first = deploycenter.post(URL, payload, format="json").json()
    before = list(MailDomain.objects.values_list("id", "name", "custom_attributes", "updated_at"))

    second = deploycenter.post(URL, payload, format="json").json()

    assert first["created"] == ["one.example.org", "two.example.org"]
    assert second == {
        "created": [],
        "existing": ["one.example.org", "two.example.org"],
        "errors": [{"domain": "bad_name", "error": "invalid domain name"}],
    }
    after = list(MailDomain.objects.values_list("id", "name", "custom_attributes", "updated_at"))
    assert after == before


def test_changed_attributes_move_updated_at_of_existing_domains_only(deploycenter):
    deploycenter.post(
        URL, {"domains": ["one.example.org"], "custom_attributes": {"v": 1}}, format="json"
    )
    before = MailDomain.objects.get(name="one.example.org")

    deploycenter.post(
        URL, {"domains": ["one.example.org"], "custom_attributes": {"v": 2}}, format="json"
    )

    after = MailDomain.objects.get(name="one.example.org")
    assert after.custom_attributes == {"v": 2}
    assert after.updated_at > before.updated_at
    assert after.created_at == before.created_at


def test_omitted_attributes_leave_existing_ones_untouched(deploycenter):
    MailDomainFactory(name="kept.example.org", custom_attributes={"siret": "1"})

    response = deploycenter.post(
        URL, {"domains": ["kept.example.org", "fresh.example.org"]}, format="json"
    )

    assert response.json()["created"] == ["fresh.example.org"]
    attributes = dict(MailDomain.objects.values_list("name", "custom_attributes"))
    assert attributes == {"kept.example.org": {"siret": "1"}, "fresh.example.org": {}}


def test_empty_attributes_object_clears_them(deploycenter):
    MailDomainFactory(name="kept.example.org", custom_attributes={"siret": "1"})

    deploycenter.post(
        URL, {"domains": ["kept.example.org"], "custom_attributes": {}}, format="json"
    )

    assert MailDomain.objects.get(name="kept.example.org").custom_attributes == {}


# --- Admins of a new domain ---------------------------------------------------------------


def test_new_domain_is_granted_to_users_whose_last_answer_named_it(deploycenter):
    from core.models import AccessAuditEntry, EntitlementSyncState, MailDomainAccess

    told = UserFactory()
    EntitlementSyncState.objects.create(
        user=told,
        status=EntitlementSyncState.Status.OK,
        entitled_domains=["new.example.org", "other.example.org"],
    )
    not_told = UserFactory()
    EntitlementSyncState.objects.create(
        user=not_told, status=EntitlementSyncState.Status.OK, entitled_domains=[]
    )

    response = deploycenter.post(URL, {"domains": ["New.Example.org"]}, format="json")

    assert response.status_code == 200
    assert response.json()["created"] == ["new.example.org"]
    access = MailDomainAccess.objects.get(maildomain__name="new.example.org")
    assert (access.user, access.role, access.source) == (told, "admin", "entitlements")
    assert AccessAuditEntry.objects.filter(
        user=told, maildomain_name="new.example.org", action="granted", trigger="provisioning"
    ).exists()
