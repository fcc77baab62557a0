"""Unit tests of the DeployCenter client (HTTP answered by `responses`): the exact request, and
every row of the classification table."""

import json
import logging
import re
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from core.entitlements.backends.base import AnswerKind
from core.entitlements.backends.deploycenter import MAX_BODY_BYTES, DeployCenterEntitlementsBackend
from core.models import User

BASE_URL = "https://deploycenter.test/api/v1.0/entitlements/"
API_KEY = "s3cret-service-key"
SIRET = "12345678900017"
SAMPLES = json.loads((Path(__file__).parents[1] / "data" / "deploycenter-samples.json").read_text())

AUTHORITATIVE = AnswerKind.AUTHORITATIVE
NO_INFORMATION = AnswerKind.NO_INFORMATION
ACCESS_ENDED = AnswerKind.ACCESS_ENDED
INVALID = AnswerKind.INVALID
BAD_REQUEST = AnswerKind.BAD_REQUEST
CONFIGURATION_ERROR = AnswerKind.CONFIGURATION_ERROR
UNAVAILABLE = AnswerKind.UNAVAILABLE


def _backend(**overrides) -> DeployCenterEntitlementsBackend:
    return DeployCenterEntitlementsBackend(
        **{"base_url": BASE_URL, "service_id": 3, "api_key": API_KEY, **overrides}
    )


def _user(email="Admin@ALPHA.Example.org") -> User:
    return User(email=email)


def _entitlements_body(**entitlements) -> dict:
    return {"organization": {"id": "x"}, "operator": None, "entitlements": entitlements}


@responses.activate
def test_request_is_exactly_what_deploycenter_expects():
    responses.get(
        BASE_URL,
        json=_entitlements_body(can_access=True, can_admin_maildomains=[]),
        match=[
            matchers.query_param_matcher(
                {
                    "service_id": "3",
                    "account_type": "user",
                    # Local part kept as is, domain part lower-cased.
                    "account_email": "Admin@alpha.example.org",
                    "siret": SIRET,
                    "organization_id": "42",
                },
                strict_match=True,
            ),
            matchers.header_matcher({"X-Service-Auth": f"Bearer {API_KEY}"}),
        ],
    )
    backend = _backend(oidc_claims=["siret", "organization_id", "absent_claim"])

    answer = backend.get_entitlements(
        user=_user(), forwarded_claims={"siret": SIRET, "organization_id": 42}
    )

    assert answer.kind is AUTHORITATIVE
    (call,) = responses.calls
    assert "Authorization" not in call.request.headers


@responses.activate
def test_no_authorization_header_even_with_a_netrc_entry(tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine deploycenter.test login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    responses.get(BASE_URL, json=_entitlements_body(can_access=True, can_admin_maildomains=[]))

    _backend().get_entitlements(user=_user(), forwarded_claims={"siret": SIRET})

    assert "Authorization" not in responses.calls[0].request.headers


@pytest.mark.parametrize("claims", [{}, {"siret": ""}, {"siret": "  "}, {"siret": None}], ids=str)
@responses.activate
def test_missing_siret_is_not_asked(claims):
    answer = _backend().get_entitlements(user=_user(), forwarded_claims=claims)

    assert (answer.kind, answer.error_code) == (AnswerKind.NOT_ASKED, "missing_claim")
    assert len(responses.calls) == 0


@responses.activate
def test_user_without_email_is_not_asked():
    answer = _backend().get_entitlements(user=_user(email=""), forwarded_claims={"siret": SIRET})

    assert (answer.kind, answer.error_code) == (AnswerKind.NOT_ASKED, "missing_email")
    assert len(responses.calls) == 0


# What each recorded live answer means for a sync.
SAMPLE_MEANINGS = {
    "admin (service-level admin link, unscoped)": (
        AUTHORITATIVE,
        "",
        ("alpha.example.org", "beta.example.org"),
    ),
    "scoped admin (service admin link scope={domains:[beta]})": (
        AUTHORITATIVE,
        "",
        ("beta.example.org",),
    ),
    "non-admin member": (AUTHORITATIVE, "", ()),
    "unknown email": (AUTHORITATIVE, "", ()),
    "missing siret": (BAD_REQUEST, "bad_request", ()),
    "unknown siret (no such organization)": (NO_INFORMATION, "no_organization", ()),
    "known organization without Messages subscription": (ACCESS_ENDED, "not_activated", ()),
    "wrong API key": (CONFIGURATION_ERROR, "http_401", ()),
    "missing account_type": (BAD_REQUEST, "bad_request", ()),
    "neither account_email nor account_id": (BAD_REQUEST, "bad_request", ()),
    "invalid email syntax": (BAD_REQUEST, "bad_request", ()),
}


def test_every_sample_has_a_meaning():
    assert {sample["case"] for sample in SAMPLES} == set(SAMPLE_MEANINGS)


@pytest.mark.parametrize("sample", SAMPLES, ids=[sample["case"] for sample in SAMPLES])
@responses.activate
def test_recorded_answers_are_classified(sample):
    responses.get(BASE_URL, json=sample["body"], status=sample["status"])

    answer = _backend().get_entitlements(user=_user(), forwarded_claims={"siret": SIRET})

    assert (answer.kind, answer.error_code, answer.domains) == SAMPLE_MEANINGS[sample["case"]]


BODY_CASES = [
    # (case id, body, kind, error_code, domains)
    (
        "normalised",
        _entitlements_body(
            can_access=True, can_admin_maildomains=["Beta.Example.org.", "alpha.example.org"]
        ),
        AUTHORITATIVE,
        "",
        ("alpha.example.org", "beta.example.org"),
    ),
    (
        "duplicates",
        _entitlements_body(
            can_access=True, can_admin_maildomains=["alpha.example.org", "ALPHA.example.org"]
        ),
        AUTHORITATIVE,
        "",
        ("alpha.example.org",),
    ),
    (
        "extra keys ignored",
        {
            **_entitlements_body(
                can_access=True,
                can_store=True,
                max_storage=10,
                can_admin_maildomains=["alpha.example.org"],
            ),
            "metrics": {"x": 1},
            "potentialOperators": [],
        },
        AUTHORITATIVE,
        "",
        ("alpha.example.org",),
    ),
    (
        "key absent, can_access false",
        _entitlements_body(can_access=False, can_access_reason="not_activated"),
        ACCESS_ENDED,
        "not_activated",
        (),
    ),
    (
        "key absent, no reason",
        _entitlements_body(can_access=False),
        NO_INFORMATION,
        "no_information",
        (),
    ),
    (
        "key absent, reason is prose",
        _entitlements_body(can_access=False, can_access_reason="Organisation inconnue !"),
        NO_INFORMATION,
        "no_information",
        (),
    ),
    (
        "list holding a non-string",
        _entitlements_body(can_access=True, can_admin_maildomains=["alpha.example.org", 3]),
        INVALID,
        "not_strings",
        (),
    ),
    (
        "string instead of a list",
        _entitlements_body(can_access=True, can_admin_maildomains="alpha.example.org"),
        INVALID,
        "not_a_list",
        (),
    ),
    (
        "null list",
        _entitlements_body(can_access=True, can_admin_maildomains=None),
        INVALID,
        "not_a_list",
        (),
    ),
    (
        "domain with a space",
        _entitlements_body(can_access=True, can_admin_maildomains=["alpha example.org"]),
        INVALID,
        "invalid_domain",
        (),
    ),
    (
        "unicode domain",
        _entitlements_body(can_access=True, can_admin_maildomains=["mairie-élan.fr"]),
        INVALID,
        "invalid_domain",
        (),
    ),
    ("not an object", ["alpha.example.org"], INVALID, "not_an_object", ()),
    ("no entitlements", {"organization": None}, INVALID, "no_entitlements", ()),
    ("entitlements not an object", {"entitlements": []}, INVALID, "no_entitlements", ()),
]


@pytest.mark.parametrize(
    ("body", "kind", "error_code", "domains"),
    [case[1:] for case in BODY_CASES],
    ids=[case[0] for case in BODY_CASES],
)
@responses.activate
def test_json_bodies_are_classified(body, kind, error_code, domains):
    responses.get(BASE_URL, json=body)

    answer = _backend().get_entitlements(user=_user(), forwarded_claims={"siret": SIRET})

    assert (answer.kind, answer.error_code, answer.domains) == (kind, error_code, domains)


@pytest.mark.parametrize(
    ("body", "error_code"),
    [
        (b"<!doctype html><html><body>Maintenance</body></html>", "not_json"),
        (b'{"entitlements": {"can_access": tr', "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (b"[" * 100_000, "not_json"),
        (b"", "not_json"),
        (b"x" * (MAX_BODY_BYTES + 1), "too_large"),
        (b'{"entitlements": {"can_access": true, "can_admin_maildomains": NaN}}', "not_json"),
        (
            b'{"entitlements": {"can_admin_maildomains": ["alpha.example.org"], '
            b'"can_admin_maildomains": []}}',
            "duplicate_key",
        ),
    ],
    ids=["html", "truncated", "binary", "deeply nested", "empty", "over 1 MB", "nan", "dup key"],
)
@responses.activate
def test_raw_bodies_are_classified(body, error_code):
    responses.get(BASE_URL, body=body, content_type="text/html")

    answer = _backend().get_entitlements(user=_user(), forwarded_claims={"siret": SIRET})

    assert (answer.kind, answer.error_code) == (INVALID, error_code)


@pytest.mark.parametrize(
    ("status", "kind", "error_code"),
    [
        (301, CONFIGURATION_ERROR, "http_301"),
        (302, CONFIGURATION_ERROR, "http_302"),
        (400, BAD_REQUEST, "bad_request"),
        (401, CONFIGURATION_ERROR, "http_401"),
        (403, CONFIGURATION_ERROR, "http_403"),
        (404, CONFIGURATION_ERROR, "http_404"),
        (405, CONFIGURATION_ERROR, "http_405"),
        (408, UNAVAILABLE, "http_408"),
        (429, UNAVAILABLE, "http_429"),
        (500, UNAVAILABLE, "http_500"),
        (502, UNAVAILABLE, "http_502"),
        (503, UNAVAILABLE, "http_503"),
        (504, UNAVAILABLE, "http_504"),
        (204, INVALID, "http_204"),
    ],
    ids=str,
)
@responses.activate
def test_statuses_are_classified(status, kind, error_code):
    headers = {"Location": BASE_URL + "elsewhere/"} if 300 <= status < 400 else {}
    responses.get(BASE_URL, status=status, body=b'{"detail": "..."}', headers=headers)

    answer = _backend().get_entitlements(user=_user(), forwarded_claims={"siret": SIRET})

    assert (answer.kind, answer.error_code) == (kind, error_code)
    # Redirects are reported, never followed.
    assert len(responses.calls) == 1


@pytest.mark.parametrize(
    ("error", "error_code"),
    [
        (requests.ReadTimeout(), "timeout"),
        (requests.ConnectTimeout(), "timeout"),
        (requests.ConnectionError(), "connection_error"),
        (requests.exceptions.ChunkedEncodingError(), "connection_error"),
    ],
    ids=["read timeout", "connect timeout", "connection error", "truncated transfer"],
)
@responses.activate
def test_transport_failures_are_unavailable(error, error_code):
    responses.get(BASE_URL, body=error)

    answer = _backend().get_entitlements(user=_user(), forwarded_claims={"siret": SIRET})

    assert (answer.kind, answer.error_code) == (UNAVAILABLE, error_code)


@responses.activate
def test_logs_carry_no_email_claim_or_key(caplog):
    responses.get(BASE_URL, json=_entitlements_body(can_access=True, can_admin_maildomains=[]))
    user = _user()

    with caplog.at_level(logging.DEBUG):
        _backend().get_entitlements(user=user, forwarded_claims={"siret": SIRET})

    text = "\n".join(record.getMessage() for record in caplog.records)
    assert str(user.pk) in text
    for secret in ("alpha.example.org", "Admin@", SIRET, API_KEY):
        assert secret.lower() not in text.lower()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": "https://deploycenter.test/api/v1.0/entitlements"}, "end with '/'"),
        ({"base_url": "deploycenter.test/api/"}, "http(s) URL"),
        ({"service_id": "three"}, "positive integer"),
        ({"service_id": 0}, "positive integer"),
        ({"api_key": ""}, "non-empty"),
        ({"api_key": "two words"}, "spaces"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": [1, 2, 3]}, "timeout"),
        ({"oidc_claims": ["organization_id"]}, "'siret'"),
        ({"oidc_claims": ["siret", "account_email"]}, "query parameters"),
        ({"oidc_claims": "siret"}, "list of claim names"),
    ],
    ids=str,
)
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        _backend(**overrides)

    assert API_KEY not in str(raised.value)


def test_parameters_are_normalised():
    backend = _backend(service_id="0003", timeout=7, oidc_claims=["siret", "siret", "x"])

    assert backend.service_id == "3"
    assert backend.timeout == (7.0, 7.0)
    assert backend.forwarded_claim_names == ["siret", "x"]
