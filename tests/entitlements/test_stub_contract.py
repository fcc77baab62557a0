"""The local DeployCenter stub answers like the live one: recorded samples replayed over HTTP."""

import json
import re
from pathlib import Path

import pytest
import requests

SAMPLES = json.loads((Path(__file__).parent / "data" / "deploycenter-samples.json").read_text())
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _without_ids(body) -> str:
    """The body with its UUIDs masked: the stub's ids differ from the live instance's."""
    return _UUID.sub("<id>", json.dumps(body, sort_keys=True, ensure_ascii=False))


@pytest.mark.parametrize("sample", SAMPLES, ids=[sample["case"] for sample in SAMPLES])
def test_stub_replays_recorded_answer(deploycenter_stub, sample):
    key = "wrong-key" if sample["case"] == "wrong API key" else deploycenter_stub.api_key

    response = requests.get(
        deploycenter_stub.url,
        params=sample["query"],
        headers={"X-Service-Auth": f"Bearer {key}"},
        timeout=5,
    )

    assert response.status_code == sample["status"]
    assert _without_ids(response.json()) == _without_ids(sample["body"])


def _get(stub, *, url=None, headers=None, method="GET", **params):
    query = {
        "service_id": str(stub.service_id),
        "account_type": "user",
        "account_email": "admin@alpha.example.org",
        "siret": "12345678900017",
        **params,
    }
    return requests.request(
        method,
        url or stub.url,
        params={name: value for name, value in query.items() if value is not None},
        headers={"X-Service-Auth": f"Bearer {stub.api_key}", **(headers or {})},
        allow_redirects=False,
        timeout=5,
    )


def test_unslashed_url_is_redirected(deploycenter_stub):
    response = _get(deploycenter_stub, url=deploycenter_stub.url.rstrip("/"))

    assert response.status_code == 301
    assert response.headers["Location"].startswith("/api/v1.0/entitlements/?service_id=")


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Service-Auth": None},
        {"X-Service-Auth": "bearer stub-service-key"},
        {"X-Service-Auth": "Token stub-service-key"},
        {"Authorization": "Bearer stub-service-key"},
    ],
    ids=["missing", "lower-case prefix", "wrong prefix", "authorization header"],
)
def test_service_auth_is_checked(deploycenter_stub, headers):
    response = _get(deploycenter_stub, headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert "detail" in response.json()


@pytest.mark.parametrize(
    ("service_id", "status"), [("4", 401), (None, 401), ("three", 500)], ids=str
)
def test_service_id_is_checked(deploycenter_stub, service_id, status):
    assert _get(deploycenter_stub, service_id=service_id).status_code == status


def test_empty_siret_is_a_bad_request(deploycenter_stub):
    response = _get(deploycenter_stub, siret="")

    assert response.status_code == 400
    assert list(response.json()) == ["siret"]


def test_post_is_not_allowed(deploycenter_stub):
    assert _get(deploycenter_stub, method="POST").status_code == 405


def test_email_is_matched_case_sensitively(deploycenter_stub):
    body = _get(deploycenter_stub, account_email="Admin@alpha.example.org").json()

    assert body["entitlements"]["can_admin_maildomains"] == []


def test_admin_domains_are_gathered_across_organisations(deploycenter_stub):
    deploycenter_stub.set_admin_domains(
        "admin@alpha.example.org", ["gamma.example.org"], siret="98765432100019"
    )

    body = _get(deploycenter_stub).json()

    assert body["entitlements"]["can_admin_maildomains"] == [
        "alpha.example.org",
        "beta.example.org",
        "gamma.example.org",
    ]


def test_switches_count_force_and_recover(deploycenter_stub):
    deploycenter_stub.fail_with(503)
    assert _get(deploycenter_stub).status_code == 503
    deploycenter_stub.answer_raw(b"<html>oops</html>")
    assert _get(deploycenter_stub).content == b"<html>oops</html>"
    deploycenter_stub.recover()
    assert _get(deploycenter_stub).status_code == 200
    assert deploycenter_stub.calls == 3


def test_hang_outlasts_a_client_timeout(deploycenter_stub):
    deploycenter_stub.hang(5)

    with pytest.raises(requests.ReadTimeout):
        requests.get(deploycenter_stub.url, timeout=(1, 0.3))
