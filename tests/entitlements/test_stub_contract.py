"""The local DeployCenter stub answers like the live one: recorded samples replayed over HTTP."""

import json
import re
import statistics
import time
from pathlib import Path

import pytest
import requests

from tests.deploycenter_stub import BLANK, REALISTIC, REQUIRED, DeployCenterStub

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


def _get(stub, *, url=None, headers=None, method="GET", session=requests, **params):
    query = {
        "service_id": str(stub.service_id),
        "account_type": "user",
        "account_email": "admin@alpha.example.org",
        "siret": "12345678900017",
        **params,
    }
    return session.request(
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


def test_admin_domains_are_gathered_across_active_subscriptions(deploycenter_stub):
    deploycenter_stub.set_admin_domains(
        "admin@alpha.example.org", ["gamma.example.org"], siret="98765432100019"
    )
    # Gamma's subscription is not active: its domains are not named, like the live service.
    assert _get(deploycenter_stub).json()["entitlements"]["can_admin_maildomains"] == [
        "alpha.example.org",
        "beta.example.org",
    ]

    deploycenter_stub.set_subscribed("98765432100019", True)

    body = _get(deploycenter_stub).json()
    assert body["entitlements"]["can_admin_maildomains"] == [
        "alpha.example.org",
        "beta.example.org",
        "gamma.example.org",
    ]


def test_ended_subscription_drops_its_domains_from_an_admin_of_another(deploycenter_stub):
    deploycenter_stub.set_subscribed("98765432100019", True)
    deploycenter_stub.set_admin_domains(
        "admin@alpha.example.org", ["gamma.example.org"], siret="98765432100019"
    )

    deploycenter_stub.set_subscribed("98765432100019", False)

    # Asked through alpha (still subscribed): gamma's ended subscription names nothing.
    body = _get(deploycenter_stub).json()
    assert "gamma.example.org" not in body["entitlements"]["can_admin_maildomains"]
    gamma = _get(deploycenter_stub, siret="98765432100019").json()
    assert gamma["entitlements"] == {"can_access": False, "can_access_reason": "not_activated"}


@pytest.mark.parametrize("account_type", ["mailbox", "anything"])
def test_account_type_is_not_validated_beyond_being_there(deploycenter_stub, account_type):
    response = _get(deploycenter_stub, account_type=account_type)

    assert response.status_code == 200
    assert response.json() == _get(deploycenter_stub).json()


@pytest.mark.parametrize(("account_type", "message"), [(None, REQUIRED), ("", BLANK)])
def test_account_type_must_be_there(deploycenter_stub, account_type, message):
    response = _get(deploycenter_stub, account_type=account_type)

    assert (response.status_code, response.json()) == (400, {"account_type": [message]})


def _median_seconds(stub, count: int, **params) -> float:
    """The median time of `count` answers on one kept-alive connection, as the client sees it."""
    session = requests.Session()
    elapsed = []
    for _ in range(count):
        started = time.perf_counter()
        _get(stub, session=session, **params)
        elapsed.append(time.perf_counter() - started)
    return statistics.median(elapsed)


def test_latency_is_drawn_like_the_live_service_by_default(deploycenter_stub):
    assert deploycenter_stub.latency == REALISTIC

    answers = sorted(deploycenter_stub.latency_for(200) for _ in range(2000))
    refusals = sorted(deploycenter_stub.latency_for(401) for _ in range(2000))

    # Live: 24 ms median (p90 37 ms) per 200, 12 ms median per 401.
    assert 0.022 < statistics.median(answers) < 0.026
    assert 0.034 < answers[1800] < 0.040
    assert 0.011 < statistics.median(refusals) < 0.013


def test_realistic_latency_is_felt_over_http():
    with DeployCenterStub(latency=0) as quick, DeployCenterStub() as realistic:
        # Interleaved, so that the machine's load weighs on both alike.
        added = statistics.median(
            _median_seconds(realistic, 5) - _median_seconds(quick, 5) for _ in range(3)
        )

    assert 0.015 < added < 0.040, added


def test_latency_is_a_parameter_and_reset_restores_the_default(deploycenter_stub):
    deploycenter_stub.latency = 0.1
    assert _median_seconds(deploycenter_stub, 3) >= 0.1

    deploycenter_stub.reset()

    assert deploycenter_stub.latency == REALISTIC
