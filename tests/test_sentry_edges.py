"""Sentry receives no personal data on the paths an attacker or a broken input takes, with
performance traces on and off: a local ingest (tests/support/sentry_ingest.py) is the DSN, the
web is this process's WSGI application on a real local HTTP server, logins go through a real
OpenID provider over HTTP (tests/support/oidc_provider.py), a failed management command runs
as a real subprocess.

- A PostgreSQL error's text loses its statement and values (`LINE 1:`, `CONTEXT:`, `DETAIL:`,
  quoted values in the message), keeping its first line; so does a log line that quotes it.
- A failed command sends no `sys.argv` (a `--claim siret=...`).
- Template spans send no context (a login form's username, a user's page).
- Requests anyone can send at will (a bad Host header, a tampered callback state) send no event.
"""

import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import sentry_sdk
from django.db import DataError, connection, transaction

from core.models import EntitlementSyncState, MailDomain, User
from messages.sentry import scrub_text
from tests.support import wait_until
from tests.support.oidc_provider import OIDCProvider
from tests.support.sentry_ingest import SentryIngest, reporting_to
from tests.support.web_server import WebServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sentry_ingest():
    with SentryIngest() as ingest:
        yield ingest


@pytest.fixture(params=[1.0, 0.0], ids=["traces on", "traces off"])
def sentry_web(request, sentry_ingest, settings, transactional_db):
    """The web on a local server, reporting to the ingest with every request traced, or none;
    yields (server, ingest, traced)."""
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "messages.sentry.user_id_middleware"]
    # The local server speaks plain HTTP: Secure cookies would never come back to it.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    with reporting_to(sentry_ingest, traces_sample_rate=request.param), WebServer() as server:
        yield server, sentry_ingest, request.param > 0


@pytest.fixture
def oidc(settings, deploycenter_backend):
    with OIDCProvider() as provider:
        provider.configure(settings)
        yield provider


@pytest.fixture
def json_cast_trigger(transactional_db):
    """New sync states fail in PostgreSQL with an error whose `LINE 1:`, `QUERY:` and
    `CONTEXT:` quote the row's claims and the user's e-mail, as a bad JSON value would."""
    table = EntitlementSyncState._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE OR REPLACE FUNCTION cast_claims() RETURNS trigger AS $$
            BEGIN
                EXECUTE format('SELECT %L::jsonb', 'x' || NEW.forwarded_claims::text
                    || (SELECT email FROM {User._meta.db_table} WHERE id = NEW.user_id));
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER cast_claims BEFORE INSERT ON {table}
                FOR EACH ROW EXECUTE FUNCTION cast_claims();
            """
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TRIGGER IF EXISTS cast_claims ON {table}")
        cursor.execute("DROP FUNCTION IF EXISTS cast_claims()")


def person() -> dict[str, str]:
    token = secrets.token_hex(4)
    return {
        "sub": f"sub-{token}",
        # Fullwidth dots: the normaliser reads them as dots, so the scrubber must too.
        "email": f"agathe.{token}@mairie-{token}\uff0eexample\uff0eorg",
        "siret": f"812345{secrets.randbelow(10**8):08d}",
        "given_name": f"Agathe{token}",
    }


def leaked(ingest: SentryIngest, values: dict[str, str]) -> list[str]:
    text = ingest.raw().decode("utf-8", "replace")
    return [name for name, value in values.items() if value in text]


def personal(claims: dict[str, str]) -> dict[str, str]:
    local, _, domain = claims["email"].partition("@")
    return {
        "e-mail's local part": local,
        "e-mail's domain": domain.replace("\uff0e", "."),
        "siret": claims["siret"],
        "name": claims["given_name"],
    }


def test_a_database_error_reaches_sentry_without_its_statement_or_values(
    sentry_web, oidc, json_cast_trigger
):
    server, ingest, _traced = sentry_web
    claims = person()
    oidc.user = claims

    response = requests.get(f"{server.url}/oidc/authenticate/", timeout=30)
    sentry_sdk.flush(timeout=10)

    assert response.status_code == 500
    [event] = ingest.events()
    values = [value["value"] for value in event["exception"]["values"]]
    # The first line stays: an operator sees what failed.
    assert all(value.startswith("invalid input syntax for type json") for value in values)
    assert not any("LINE 1" in value or "CONTEXT" in value for value in values), values
    assert leaked(ingest, personal(claims)) == []


@pytest.mark.parametrize("traces", [1.0, 0.0], ids=["traces on", "traces off"])
def test_a_log_line_quoting_a_database_error_loses_its_values(sentry_ingest, db, traces):
    secret = f"siret-{secrets.token_hex(6)}"
    with reporting_to(sentry_ingest, traces_sample_rate=traces):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                # PostgreSQL quotes the bad value in the error's first line.
                cursor.execute("SELECT %s::uuid", [secret])
        except DataError as error:
            logging.getLogger("core.test").error("sync failed: %s", error, exc_info=True)
    sentry_sdk.flush(timeout=10)

    [event] = sentry_ingest.events()
    assert event["logentry"]["message"] == "sync failed: %s"
    assert "invalid input syntax for type uuid" in event["logentry"]["params"][0]
    assert secret.encode() not in sentry_ingest.raw()


def test_template_spans_carry_no_context(sentry_web, fast_password_hasher):
    server, ingest, traced = sentry_web
    token = secrets.token_hex(4)
    operator = f"ops.{token}@example.org"
    User.objects.create_superuser(email=operator, password="a-password")
    shown = User.objects.create_user(email=f"shown.{token}@example.org", full_name=f"Shown{token}")
    domain = MailDomain.objects.create(name=f"mairie-{token}.example.org")
    browser = requests.Session()
    browser.get(f"{server.url}/admin/login/", timeout=30)
    csrf = browser.cookies["csrftoken"]
    # A mistyped username first: the login page is rendered again with it in its context.
    mistyped = f"agathe-{token}"
    failed = browser.post(
        f"{server.url}/admin/login/",
        data={"username": mistyped, "password": "wrong", "csrfmiddlewaretoken": csrf},
        timeout=30,
    )
    assert failed.status_code == 200 and mistyped in failed.text
    login = {"username": operator, "password": "a-password", "csrfmiddlewaretoken": csrf}
    browser.post(f"{server.url}/admin/login/", data=login, timeout=30)
    for page in (
        f"/admin/core/user/{shown.pk}/change/",
        f"/admin/core/maildomain/{domain.pk}/change/",
    ):
        answer = browser.get(f"{server.url}{page}", timeout=30)
        assert answer.status_code == 200 and token in answer.text
    sentry_sdk.flush(timeout=10)

    transactions = [
        payload for envelope in ingest.envelopes for payload in envelope.payloads("transaction")
    ]
    if traced:
        spans = [span for payload in transactions for span in payload.get("spans", ())]
        assert any(span.get("op") == "template.render" for span in spans)
    else:
        assert transactions == []
    # The token is in the mistyped username, both e-mails, the name and the domain's name.
    assert token.encode() not in ingest.raw()


def test_requests_anyone_can_send_make_no_event(sentry_web, oidc, json_cast_trigger, settings):
    server, ingest, _traced = sentry_web
    # As in production (the test runner adds its own names).
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    for _ in range(10):
        bad_host = requests.get(
            f"{server.url}/admin/", headers={"Host": "evil.example"}, timeout=30
        )
        assert bad_host.status_code == 400
        # A browser that started a login comes back with a state it never received.
        browser = requests.Session()
        browser.get(f"{server.url}/oidc/authenticate/", allow_redirects=False, timeout=30)
        tampered = browser.get(
            f"{server.url}/oidc/callback/",
            params={"code": secrets.token_hex(8), "state": secrets.token_hex(8)},
            allow_redirects=False,
            timeout=30,
        )
        assert tampered.status_code == 400
    sentry_sdk.flush(timeout=10)
    assert ingest.events() == []

    # The ingest hears a real failure: the silence above is the filter's.
    oidc.user = person()
    assert requests.get(f"{server.url}/oidc/authenticate/", timeout=30).status_code == 500
    sentry_sdk.flush(timeout=10)
    assert len(ingest.events()) == 1


@pytest.mark.parametrize("traces", ["1.0", "0"], ids=["traces on", "traces off"])
def test_a_failed_command_sends_no_argument(sentry_ingest, tmp_path, traces):
    siret = f"812345{secrets.randbelow(10**8):08d}"
    environment = {
        **os.environ,
        # Nothing listens there: the command fails with an unhandled OperationalError.
        "DATABASE_URL": "postgres://postgres@127.0.0.1:9/nothing",
        "DATA_DIR": str(tmp_path),
        "SENTRY_DSN": sentry_ingest.dsn,
        "SENTRY_TRACES_SAMPLE_RATE": traces,
    }
    command = [sys.executable, "manage.py", "simulate_login", "agathe@example.org"]
    failed = subprocess.run(
        [*command, "--claim", f"siret={siret}"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert failed.returncode != 0 and "OperationalError" in failed.stderr
    [event] = wait_until(sentry_ingest.events, message="the command's event")
    assert "sys.argv" not in event.get("extra", {})
    assert siret.encode() not in sentry_ingest.raw()
    assert b"agathe" not in sentry_ingest.raw()


@pytest.mark.parametrize(
    "text",
    [
        "mail to agathe.b@mairie\uff0eexample\uff0eorg failed",
        "mail to agathe.b@mairie\u3002example\uff61org. failed",
        "mail to agathe.b%40mairie%EF%BC%8Eexample%EF%BC%8Eorg failed",
        "mail to o'agathe.b+x@mairie.example.org failed",
        "mail to agathe.b@mairie.example.org. failed",
    ],
    ids=repr,
)
def test_the_scrubber_knows_every_address_the_normaliser_accepts(text):
    scrubbed = scrub_text(text)

    assert scrubbed.startswith("mail to ") and scrubbed.endswith(" failed")
    assert "agathe" not in scrubbed and "mairie" not in scrubbed
