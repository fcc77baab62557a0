"""POST /api/v1.0/entitlements/changes/: DeployCenter's webhooks, as the endpoint takes them.

Off unless a token is set; refused like the provisioning API without the token; a clear 400
and nothing queued for a body that is not a change signal; 202 with what it requested, the
sync tasks on the broker (delayed by the settle time, collapsed per user), no token in logs.
"""

import json
import logging

import pytest
from rest_framework.test import APIClient

from core import metrics
from core.entitlements import request_sync
from core.entitlements.change_signals import ChangeEvent
from core.entitlements.receipts import RequestOutcome
from core.models import EntitlementSyncState, Trigger
from tests.deploycenter_stub import ALPHA_SIRET
from tests.support.broker import broker_key

URL = "/api/v1.0/entitlements/changes/"
TOKEN = "changes-token-0123456789abcdef"
OLD_TOKEN = "older-token-fedcba9876543210"
REFUSED = {"detail": "Invalid or missing entitlements changes token."}


@pytest.fixture
def changes_token(settings):
    settings.ENTITLEMENTS_CHANGES_TOKEN = (TOKEN,)
    settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS = 2.0
    return TOKEN


def post(body, *, token=TOKEN, raw: bytes | None = None, content_type="application/json"):
    client = APIClient()
    if token is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    data = raw if raw is not None else json.dumps(body).encode()
    return client.generic("POST", URL, data, content_type=content_type)


def signals_count(event_type: str, result: str) -> float:
    return metrics.CHANGE_SIGNALS.labels(event_type, result)._value.get()


def test_off_without_a_token(db, settings):
    settings.ENTITLEMENTS_CHANGES_TOKEN = ()

    response = post({"event_type": "account.updated", "account_email": None})

    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"bearer {TOKEN}",
        f"Bearer  {TOKEN}",
        f"Bearer {TOKEN} ",
        f"Token {TOKEN}",
        f"Bearer {TOKEN[:-1]}",
    ],
)
def test_refused_without_the_token_like_the_provisioning_api(
    transactional_db, changes_token, broker_queues, authorization
):
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)
    before = signals_count("other", "refused")

    response = client.post(
        URL, {"event_type": "account.updated", "account_email": "a@b.example"}, format="json"
    )

    assert response.status_code == 403
    assert response.json() == REFUSED
    assert signals_count("other", "refused") == before + 1
    assert broker_queues.length("interactive") == 0


def test_the_provisioning_key_does_not_open_it(db, settings, changes_token):
    settings.PROVISIONING_API_KEY = "provisioning-key-0123456789"

    response = post(
        {"event_type": "account.updated", "account_email": None},
        token="provisioning-key-0123456789",
    )

    assert response.status_code == 403


def test_every_listed_token_is_accepted_for_rotation(db, settings):
    settings.ENTITLEMENTS_CHANGES_TOKEN = (OLD_TOKEN, TOKEN)

    for token in (OLD_TOKEN, TOKEN):
        response = post({"event_type": "account.updated", "account_email": None}, token=token)
        assert response.status_code == 202, token


def test_an_account_signal_requests_a_settled_sync_of_that_user(
    transactional_db, changes_token, broker_queues, make_user
):
    user = make_user(email="Jeanne.Martin@Mairie.example.org")
    before = signals_count("account.updated", "requested")

    # DeployCenter stores the domain part lower-case; the local user's e-mail is found as
    # every door finds it.
    response = post(
        {
            "event_type": "account.updated",
            "account_email": "Jeanne.Martin@mairie.EXAMPLE.org",
            "timestamp": "2026-12-02T09:00:00+00:00",
            "organization_siret": ALPHA_SIRET,
            "some_future_key": {"nested": [1, 2]},
            "subscription_domains": None,
        }
    )

    assert response.status_code == 202
    assert response.json() == {"users": 1, "organisation_run": None}
    [message] = broker_queues.messages("signals")
    assert (message["task"], message["args"]) == (
        "entitlements.sync_user",
        [str(user.pk), "change_signal"],
    )
    state = EntitlementSyncState.objects.get(user=user)
    assert state.last_trigger == Trigger.CHANGE_SIGNAL
    # Due after the settle delay: the webhook comes before DeployCenter commits.
    assert 1.5 <= (state.enqueued_at - state.requested_at).total_seconds() <= 2.5
    assert signals_count("account.updated", "requested") == before + 1


def test_the_broker_message_is_delayed_and_carries_no_personal_data(
    transactional_db, changes_token, broker_queues, make_user
):
    user = make_user(email="secret.person@example.org")

    post({"event_type": "account.updated", "account_email": user.email})

    [raw] = broker_queues.client.lrange(broker_key("signals"), 0, -1)
    message = json.loads(raw)
    assert message["headers"]["eta"] is not None
    assert b"secret.person" not in raw


def test_repeated_signals_for_a_user_collapse_while_the_sync_is_not_due(
    transactional_db, changes_token, broker_queues, make_user
):
    user = make_user()

    answers = [
        post({"event_type": "account.updated", "account_email": user.email}).json()
        for _ in range(5)
    ]

    assert answers == [{"users": 1, "organisation_run": None}] * 5
    assert broker_queues.length("signals") == 1


def test_a_login_does_not_wait_for_a_signal_sync_not_due_yet(
    transactional_db, changes_token, broker_queues, make_user
):
    user = make_user()
    post({"event_type": "account.updated", "account_email": user.email})

    login = request_sync(user=user, trigger=Trigger.LOGIN)

    assert login.outcome == RequestOutcome.QUEUED
    assert [m["args"][1] for m in broker_queues.messages("signals")] == ["change_signal"]
    assert [m["args"][1] for m in broker_queues.messages("interactive")] == ["login"]


def test_an_unknown_account_requests_nothing(transactional_db, changes_token, broker_queues):
    before = signals_count("account.updated", "no_user")

    response = post({"event_type": "account.updated", "account_email": "nobody@example.org"})

    assert response.status_code == 202
    assert response.json() == {"users": 0, "organisation_run": None}
    assert broker_queues.length("interactive") == broker_queues.length("signals") == 0
    assert signals_count("account.updated", "no_user") == before + 1


def test_a_null_email_finds_the_account_by_its_external_id(
    transactional_db, changes_token, broker_queues, make_user
):
    user = make_user(sub="oidc-sub-42")

    response = post(
        {
            "event_type": "account.updated",
            "account_email": None,
            "account_external_id": "oidc-sub-42",
        }
    )

    assert response.json()["users"] == 1
    assert broker_queues.messages("signals")[0]["args"][0] == str(user.pk)


@pytest.mark.parametrize(
    "event_type", ["subscription.created", "subscription.updated", "subscription.deleted"]
)
def test_a_subscription_signal_queues_one_settled_organisation_run(
    transactional_db, changes_token, broker_queues, make_user, event_type
):
    users = [make_user() for _ in range(3)]
    for user in users:
        EntitlementSyncState.objects.create(user=user, forwarded_claims={"siret": ALPHA_SIRET})
    other = make_user()
    EntitlementSyncState.objects.create(user=other, forwarded_claims={"siret": "99999999999999"})

    first = post({"event_type": event_type, "organization_siret": ALPHA_SIRET})
    second = post({"event_type": event_type, "organization_siret": ALPHA_SIRET})

    assert first.status_code == second.status_code == 202
    assert first.json() == {"users": 0, "organisation_run": "queued"}
    assert second.json() == {"users": 0, "organisation_run": "collapsed"}
    [message] = broker_queues.messages("bulk")
    assert message["task"] == "entitlements.sync_organisation_admins"
    assert message["args"][0] in {str(user.pk) for user in users}
    assert message["args"][1] == "change_signal"
    assert ALPHA_SIRET not in json.dumps(message)
    assert broker_queues.length("interactive") == 0


def test_a_subscription_signal_for_an_organisation_without_local_users_queues_nothing(
    transactional_db, changes_token, broker_queues
):
    response = post({"event_type": "subscription.updated", "organization_siret": ALPHA_SIRET})

    assert response.json() == {"users": 0, "organisation_run": None}
    assert broker_queues.length("bulk") == 0


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"not json", "Request body is not valid JSON."),
        (b"", "Request body is not valid JSON."),
        (
            b'{"event_type": "account.updated", "event_type": "x"}',
            "Request body names a key twice in one object.",
        ),
        (b"[]", "The body must be a JSON object."),
        (b'"account.updated"', "The body must be a JSON object."),
        (b"{}", "event_type is required."),
        (
            b'{"event_type": "account.deleted", "account_email": null}',
            "event_type must be one of: account.updated, subscription.created, "
            "subscription.updated, subscription.deleted.",
        ),
        (
            b'{"event_type": null}',
            "event_type must be one of: account.updated, "
            "subscription.created, subscription.updated, subscription.deleted.",
        ),
        (
            b'{"event_type": "account.updated"}',
            "account_email is required for account.updated (null is accepted).",
        ),
        (
            b'{"event_type": "subscription.deleted"}',
            "organization_siret is required for subscription.deleted (null is accepted).",
        ),
        (
            b'{"event_type": "account.updated", "account_email": 42}',
            "account_email must be a string or null.",
        ),
        (
            b'{"event_type": "subscription.updated", "organization_siret": ["1"]}',
            "organization_siret must be a string or null.",
        ),
        (
            b'{"event_type": "account.updated", "account_email": "a@b.example", "pad": "'
            + b"x" * (64 * 1024)
            + b'"}',
            "Request body is larger than 64 KB.",
        ),
    ],
    ids=[
        "not-json",
        "empty",
        "duplicate-key",
        "array",
        "string",
        "no-event",
        "unknown-event",
        "null-event",
        "no-email-key",
        "no-siret-key",
        "email-not-string",
        "siret-not-string",
        "too-large",
    ],
)
def test_a_body_that_is_no_change_signal_is_a_clear_400_and_queues_nothing(
    transactional_db, changes_token, broker_queues, make_user, raw, detail
):
    make_user(email="a@b.example")
    before = signals_count("other", "invalid")

    response = post(None, raw=raw)

    assert response.status_code == 400
    assert response.json() == {"detail": detail}
    assert broker_queues.length("interactive") == broker_queues.length("bulk") == 0
    assert not EntitlementSyncState.objects.exists()
    assert signals_count("other", "invalid") == before + 1


def test_a_declared_length_over_the_limit_is_refused_before_reading(db, changes_token):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    response = client.generic(
        "POST", URL, b"{}", content_type="application/json", CONTENT_LENGTH=str(10**6)
    )

    assert response.status_code == 400
    assert response.json() == {"detail": "Request body is larger than 64 KB."}


def test_the_token_is_never_logged(
    transactional_db, changes_token, broker_queues, make_user, caplog
):
    user = make_user()
    caplog.set_level(logging.DEBUG)

    post({"event_type": "account.updated", "account_email": user.email})
    post({"event_type": "account.updated", "account_email": user.email}, token=TOKEN + "x")
    post(None, raw=b"nope")

    assert caplog.records, "the requests logged something (else this test proves nothing)"
    assert TOKEN not in caplog.text


def test_the_metric_knows_every_event_type():
    assert set(ChangeEvent) == metrics._SIGNAL_EVENTS
