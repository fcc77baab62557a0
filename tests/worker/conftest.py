"""Fixtures of the worker tests: the broker's queues on the test Redis, producer apps pointed at
another broker (e.g. the private Redis of tests/conftest.py), users."""

import json
import time
import uuid
from base64 import b64decode
from contextlib import contextmanager
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import redis
import responses
from celery import Celery
from celery.contrib.testing.app import setup_default_app
from django.conf import settings
from django.test import Client

import worker.tasks  # noqa: F401 - see below
from core.models import User
from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE

# worker.tasks is imported here, once, before any test app exists: celery's testing helpers
# restore the global list of shared-task finalizers after each test app, so tasks first
# imported inside one test would be missing from every later test app.

QUEUES = (INTERACTIVE_QUEUE, BULK_QUEUE)


class BrokerQueues:
    """Read access to the task messages waiting in the Redis broker's queues."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url)

    def clear(self) -> None:
        self.client.delete(*QUEUES)

    def length(self, queue: str) -> int:
        return self.client.llen(queue)

    def messages(self, queue: str) -> list[dict]:
        """Each queued task as {"task", "id", "args", "expires"}, oldest first."""
        found = []
        # kombu LPUSHes and BRPOPs: the list tail is the oldest message.
        for raw in reversed(self.client.lrange(queue, 0, -1)):
            message = json.loads(raw)
            body = json.loads(b64decode(message["body"]))
            headers = message["headers"]
            found.append(
                {
                    "task": headers["task"],
                    "id": headers["id"],
                    "args": body[0],
                    "expires": headers.get("expires"),
                }
            )
        return found


@pytest.fixture
def broker_queues():
    """The test Redis's broker queues, emptied before and after the test (only our queue
    keys on our own db number: nothing else on the shared server is touched)."""
    queues = BrokerQueues(settings.CELERY_BROKER_URL)
    queues.clear()
    yield queues
    queues.clear()
    queues.client.close()


@contextmanager
def producer_app(broker_url: str):
    """The project's Celery configuration on another broker, as the current app."""
    app = Celery("producer", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.broker_url = broker_url
    # A worker started on this app runs in a test thread: Celery must close its database
    # connection after each task (settings' CELERY_DB_REUSE_MAX would keep it open past the
    # test, and the test database could not be flushed and dropped behind it).
    app.conf.CELERY_DB_REUSE_MAX = None
    # setup_default_app only restores the previous apps on exit; it does not switch.
    with setup_default_app(app):
        app.set_current()
        app.set_default()
        yield app
    app.close()


@pytest.fixture
def make_user(db):
    def make(**fields) -> User:
        token = uuid.uuid4().hex[:12]
        fields.setdefault("email", f"user-{token}@example.org")
        fields.setdefault("sub", f"sub-{token}")
        return User.objects.create_user(**fields)

    return make


@pytest.fixture(scope="session")
def celery_config():
    """The test app gets the project's own Celery settings (acks_late, routes, results in
    the database...), on the test Redis."""
    from django.conf import settings as django_settings

    return {
        name.removeprefix("CELERY_").lower(): value
        for name, value in vars(django_settings._wrapped).items()
        if name.startswith("CELERY_")
    }


@pytest.fixture(scope="session")
def celery_worker_parameters():
    return {"queues": QUEUES}


@pytest.fixture
def scripted_upstream(settings):
    """Point the engine at the scripted backend; call it again to change the answers."""
    from tests.worker.scripted_backend import SCRIPTED_BACKEND

    settings.ENTITLEMENTS_BACKEND = SCRIPTED_BACKEND
    # Every sync asks the upstream: no fresh answer, no stale stand-in.
    settings.ENTITLEMENTS_CACHE_TIMEOUT = 0
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 0

    def script(*, admins_by_email=None, unavailable_emails=(), claims=(), latency_seconds=0.0):
        settings.ENTITLEMENTS_BACKEND_PARAMETERS = {
            "admins_by_email": admins_by_email or {},
            "unavailable_emails": list(unavailable_emails),
            "claims": list(claims),
            "latency_seconds": latency_seconds,
        }

    script()
    return script


IDP = "https://idp.example.test"
CLIENT_SECRET = "s" * 64
ACCESS_TOKEN = "the-access-token"


class FakeProvider:
    """The OIDC provider side of a code flow: mozilla-django-oidc's real views and backend
    talk to token and userinfo endpoints answered by `responses` (HS256-signed id token)."""

    def __init__(self, settings, *, passthru: tuple[str, ...] = ()):
        self.passthru = passthru
        # Every token handed out, for tests that check none of them leaks.
        self.issued_tokens: list[str] = []
        settings.OIDC_RP_CLIENT_ID = "messages"
        settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
        settings.OIDC_RP_SIGN_ALGO = "HS256"
        settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{IDP}/authorize"
        settings.OIDC_OP_TOKEN_ENDPOINT = f"{IDP}/token"
        settings.OIDC_OP_USER_ENDPOINT = f"{IDP}/userinfo"

    def login(self, claims: dict) -> Client:
        """Run the whole flow in a new browser; return it, logged in or not."""
        browser = Client()
        authorize = browser.get("/oidc/authenticate/")
        query = parse_qs(urlsplit(authorize["Location"]).query)
        now = int(time.time())
        id_token = jwt.encode(
            {
                "iss": IDP,
                "sub": claims["sub"],
                "nonce": query["nonce"][0],
                "iat": now,
                "exp": now + 300,
            },
            CLIENT_SECRET,
            algorithm="HS256",
        )
        self.issued_tokens += [id_token, ACCESS_TOKEN]
        with responses.RequestsMock() as provider:
            for prefix in self.passthru:
                provider.add_passthru(prefix)
            provider.post(
                f"{IDP}/token",
                json={
                    "id_token": id_token,
                    "access_token": ACCESS_TOKEN,
                    "token_type": "Bearer",
                },
            )
            provider.get(f"{IDP}/userinfo", json=claims)
            started = time.perf_counter()
            response = browser.get(
                "/oidc/callback/", {"code": "the-code", "state": query["state"][0]}
            )
            browser.elapsed = time.perf_counter() - started
        assert response.status_code == 302
        return browser


@pytest.fixture
def provider(settings):
    return FakeProvider(settings)
