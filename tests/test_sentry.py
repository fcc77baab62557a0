"""Sentry receives no secret and no personal data, and still what an operator needs.

A local ingest server (tests/support/sentry_ingest.py) is the DSN. The web, this process's
WSGI application on a real local HTTP server (the path production takes), reports a failing
OIDC callback run through mozilla-django-oidc's real code flow, and a signed-in user's failing
API call; a real `celery -A messages worker`, configured by SENTRY_DSN in its environment,
reports a sync whose DeployCenter answer is invalid. Every byte sent, decoded, is searched.
"""

import secrets
import time
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import jwt
import pytest
import requests
import responses
import sentry_sdk
from django.db import connection
from django.test import Client

from core.models import EntitlementSyncState, MailDomainAccess, User
from messages.sentry import scrub_text
from tests.support import WorkerProcess, wait_until, worker_environment
from tests.support.broker import producer_app
from tests.support.oidc_provider import IDP, FakeProvider
from tests.support.sentry_ingest import SentryIngest, reporting_to
from tests.support.web_server import WebServer

SYNC_USER_TASK = "entitlements.sync_user"


@pytest.fixture
def sentry_ingest():
    with SentryIngest() as ingest:
        yield ingest


@pytest.fixture
def sentry_web(sentry_ingest, settings, transactional_db):
    """The web on a local server, reporting to the local ingest as with SENTRY_DSN set
    (messages/settings.py's two steps); yields (server, ingest)."""
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "messages.sentry.user_id_middleware"]
    # The local server speaks plain HTTP: Secure cookies would never come back to it.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    # Every request traced too: transactions and their spans are searched with the events.
    with reporting_to(sentry_ingest, traces_sample_rate=1.0), WebServer() as server:
        yield server, sentry_ingest


@pytest.fixture
def refuse_rows(transactional_db):
    """refuse_rows(model): PostgreSQL refuses the model's new rows with an error whose DETAIL
    quotes their user's e-mail, as it does for a duplicate key: a failure inside the project's
    code that no handling of integrity errors (identity conflicts, existing domains) turns
    into a clean refusal. The triggers are dropped after the test."""
    tables = []

    def refuse(model) -> None:
        table = model._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                CREATE OR REPLACE FUNCTION refuse_row() RETURNS trigger AS $$
                BEGIN
                    RAISE EXCEPTION 'row refused by the test'
                        USING DETAIL = format('Key (email)=(%s) already exists.',
                                              (SELECT email FROM {User._meta.db_table}
                                               WHERE id = NEW.user_id));
                END $$ LANGUAGE plpgsql;
                CREATE TRIGGER refuse_row BEFORE INSERT ON {table}
                    FOR EACH ROW EXECUTE FUNCTION refuse_row();
                """
            )
        tables.append(table)

    yield refuse
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"DROP TRIGGER IF EXISTS refuse_row ON {table}")
        cursor.execute("DROP FUNCTION IF EXISTS refuse_row()")


def encodings(value: str) -> list[str]:
    """The value as written, and as a URL or a form would encode it."""
    return [value, quote(value), quote_plus(value)]


def leaks(raw: bytes, values_by_name: dict[str, list[str]]) -> list[str]:
    text = raw.decode("utf-8", "replace")
    return [name for name, values in values_by_name.items() if any(v in text for v in values)]


def failing_oidc_callback(settings, base_url: str, claims: dict) -> dict[str, str]:
    """Run the OIDC code flow to a callback that fails; return every secret it handled."""
    FakeProvider(settings)
    client_secret = secrets.token_urlsafe(32)
    settings.OIDC_RP_CLIENT_SECRET = client_secret
    browser = requests.Session()
    # The provider's endpoints are answered here, in the server's threads too.
    with responses.RequestsMock(assert_all_requests_are_fired=True) as provider:
        provider.add_passthru(base_url)
        authorize = browser.get(f"{base_url}/oidc/authenticate/", allow_redirects=False)
        query = parse_qs(urlsplit(authorize.headers["Location"]).query)
        now = int(time.time())
        handled = {
            "client secret": client_secret,
            "access token": f"at-{secrets.token_urlsafe(24)}",
            "refresh token": f"rt-{secrets.token_urlsafe(24)}",
            "authorization code": f"code-{secrets.token_urlsafe(16)}",
            "state": query["state"][0],
            "nonce": query["nonce"][0],
            "session cookie": browser.cookies[settings.SESSION_COOKIE_NAME],
        }
        handled["id token"] = jwt.encode(
            {
                "iss": IDP,
                "sub": claims["sub"],
                "nonce": handled["nonce"],
                "iat": now,
                "exp": now + 60,
            },
            client_secret,
            algorithm="HS256",
        )
        provider.post(
            f"{IDP}/token",
            json={
                "id_token": handled["id token"],
                "access_token": handled["access token"],
                "refresh_token": handled["refresh token"],
                "token_type": "Bearer",
            },
        )
        provider.get(f"{IDP}/userinfo", json=claims)
        response = browser.get(
            f"{base_url}/oidc/callback/",
            params={"code": handled["authorization code"], "state": handled["state"]},
            allow_redirects=False,
        )
    assert response.status_code == 500
    return handled


def test_a_failing_oidc_callback_reports_no_secret_nor_personal_data(
    settings, deploycenter_backend, refuse_rows, sentry_web
):
    server, ingest = sentry_web
    refuse_rows(EntitlementSyncState)
    token = secrets.token_hex(4)
    email = f"agathe.{token}@mairie-{token}.example.org"
    siret = f"812345{secrets.randbelow(10**8):08d}"
    claims = {"sub": f"sub-{token}", "email": email, "siret": siret, "given_name": "Agathe"}

    handled = failing_oidc_callback(settings, server.url, claims)
    sentry_sdk.flush(timeout=10)
    assert ingest.events(), "the failure reached Sentry"
    assert any(envelope.payloads("transaction") for envelope in ingest.envelopes)

    events = ingest.events()
    exceptions = [value for event in events for value in event["exception"]["values"]]
    # What an operator needs: the exception's type and module, the view, where it failed.
    assert any(
        value["type"] == "ProgrammingError" and value["module"] == "django.db.utils"
        for value in exceptions
    ), exceptions
    assert any("row refused by the test" in value["value"] for value in exceptions), exceptions
    frames = [frame for value in exceptions for frame in value["stacktrace"]["frames"]]
    assert any(frame["module"] == "core.authentication" for frame in frames)
    for event in events:
        assert event["transaction"] == "/oidc/callback/"
        assert event["request"]["url"] == f"{server.url}/oidc/callback/"
        assert event["request"]["method"] == "GET"
    found = leaks(
        ingest.raw(),
        {
            **{name: [value] for name, value in handled.items()},
            "e-mail": encodings(email),
            "e-mail's local part": [email.split("@")[0]],
            "siret claim": [siret],
        },
    )
    assert not found, found


def test_a_failing_api_call_reports_the_user_id_only(settings, refuse_rows, sentry_web):
    server, ingest = sentry_web
    settings.FEATURE_MAILDOMAIN_CREATE = True
    refuse_rows(MailDomainAccess)
    token = secrets.token_hex(4)
    email = f"agathe.{token}@mairie-{token}.example.org"
    user = User.objects.create_user(email=email, sub=f"sub-{token}", is_staff=True)
    signed_in = Client()
    signed_in.force_login(user)
    session = signed_in.cookies[settings.SESSION_COOKIE_NAME].value
    csrf = secrets.token_hex(16)
    # The query string names the user too: a link an operator might have followed.
    response = requests.post(
        f"{server.url}/api/v1.0/admin/maildomains/?email={quote(email)}",
        json={"name": f"mairie-{token}.example.org"},
        cookies={settings.SESSION_COOKIE_NAME: session, settings.CSRF_COOKIE_NAME: csrf},
        headers={"X-CSRFToken": csrf, "Authorization": f"Bearer secret-{token}"},
        timeout=10,
    )
    assert response.status_code == 500
    sentry_sdk.flush(timeout=10)
    assert ingest.events(), "the failure reached Sentry"
    assert any(envelope.payloads("transaction") for envelope in ingest.envelopes)

    events = ingest.events()
    for event in events:
        assert event["user"] == {"id": str(user.pk)}
        assert event["request"]["url"] == f"{server.url}/api/v1.0/admin/maildomains/"
        assert event["request"]["method"] == "POST"
        assert event["request"]["headers"]["Content-Type"] == "application/json"
    found = leaks(
        ingest.raw(),
        {
            "e-mail": encodings(email),
            "e-mail's local part": [email.split("@")[0]],
            "session cookie": [session],
            "CSRF cookie": [csrf],
            "authorization header": [f"secret-{token}"],
            "request body": [f"mairie-{token}"],
        },
    )
    assert not found, found


@pytest.mark.broker
def test_a_failing_worker_sync_reports_no_email_siret_nor_api_key(
    transactional_db, settings, deploycenter_backend, private_redis, sentry_ingest, tmp_path
):
    token = secrets.token_hex(4)
    email = f"agathe.{token}@mairie-{token}.example.org"
    siret = f"812345{secrets.randbelow(10**8):08d}"
    user = User.objects.create_user(email=email, sub=f"sub-{token}")
    EntitlementSyncState.objects.create(user=user, forwarded_claims={"siret": siret})
    # DeployCenter is asked (e-mail and siret in the query string) and answers nonsense,
    # which the engine logs at ERROR: the logging integration turns that into an event.
    deploycenter_backend.answer_raw(b"<html>not an answer</html>", content_type="text/html")
    private_redis.start()
    worker = WorkerProcess(
        env=worker_environment(
            redis_url=private_redis.url,
            data_dir=tmp_path,
            SENTRY_DSN=sentry_ingest.dsn,
            SENTRY_ENVIRONMENT="test",
            SENTRY_TRACES_SAMPLE_RATE=1.0,
            ENTITLEMENTS_CACHE_TIMEOUT_SECONDS=0,
            ENTITLEMENTS_STALE_FALLBACK_SECONDS=0,
        ),
        log_path=tmp_path / "worker.log",
    ).start()
    try:
        with producer_app(private_redis.url) as app:
            app.send_task(SYNC_USER_TASK, args=[str(user.pk), "admin"])
        wait_until(
            lambda: EntitlementSyncState.objects.filter(user=user, status="invalid").exists(),
            message="the sync's invalid answer",
        )
        wait_until(lambda: sentry_ingest.events(), message="an event at the ingest")
    finally:
        worker.stop()

    assert deploycenter_backend.calls >= 1
    assert any(envelope.payloads("transaction") for envelope in sentry_ingest.envelopes)
    [event, *_] = sentry_ingest.events()
    assert event["level"] == "error"
    assert event["extra"]["celery-job"]["task_name"] == SYNC_USER_TASK
    assert event.get("transaction") == SYNC_USER_TASK
    assert str(user.pk) in event["logentry"]["params"]
    # The upstream call is there, without its query string.
    http = [crumb for crumb in event["breadcrumbs"]["values"] if crumb.get("type") == "http"]
    assert http and all(crumb["data"]["url"] == deploycenter_backend.url for crumb in http)
    found = leaks(
        sentry_ingest.raw(),
        {
            "e-mail": encodings(email),
            "e-mail's local part": [email.split("@")[0]],
            "siret": [siret],
            "DeployCenter API key": [deploycenter_backend.api_key],
        },
    )
    assert not found, found


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        (
            'duplicate key value violates unique constraint "core_user_email_key"\n'
            "DETAIL:  Key (email)=(a.b@c.example.org) already exists.",
            "unique constraint",
            "a.b@c.example.org",
        ),
        (
            "Max retries exceeded with url: /api/v1.0/entitlements/?service_id=3&"
            "account_email=a.b%40c.example.org&siret=81234567800019 (Caused by ...)",
            "/api/v1.0/entitlements/",
            "81234567800019",
        ),
        ("sent Bearer dc-key-1234 upstream", "upstream", "dc-key-1234"),
        ("mail to Agathe.B+x@Mairie.example.org failed", "failed", "Agathe.B"),
    ],
)
def test_messages_lose_rows_queries_keys_and_emails(text, kept, gone):
    scrubbed = scrub_text(text)
    assert kept in scrubbed
    assert gone not in scrubbed
