"""No email (nor its local part), claim value, token or API key leaves the database: not in
task arguments, task results, broker messages, nor logs.

OIDC logins, a provisioning call, manual, per-domain and full resyncs, and an upstream outage
with retries run through a real worker subprocess (logging at DEBUG, the most talkative level)
on a private Redis whose every command is recorded with MONITOR: task messages, events,
results, cache writes and locks, each decoded (JSON, base64 message bodies) before the search.
The result backend's rows and this process's logs (the web side, at DEBUG) are searched too.
"""

import base64
import binascii
import json
import logging
import re
import secrets
import socket
import threading
from urllib.parse import quote, quote_plus

import pytest
from django.core.cache import cache
from django.forms.models import model_to_dict
from django.test import Client
from django_celery_results.models import TaskResult

from core.entitlements.sync_requests import request_resync, request_sync
from core.models import EntitlementSyncState, MailDomain, SyncRun, User
from tests.deploycenter_stub import DeployCenterStub
from tests.faults.conftest import ALPHA, BETA, GAMMA, synced_domains
from tests.support import wait_until
from tests.support.broker import producer_app
from tests.support.oidc_provider import CLIENT_SECRET, FakeProvider

_BASE64 = re.compile(rb"^[A-Za-z0-9+/=\s]{8,}$")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}


def monitor_arguments(line: str) -> list[bytes]:
    """The arguments of one MONITOR line (`ts [db addr] "a" "b"`), unescaped to bytes."""
    arguments, current, index, quoted = [], None, 0, False
    while index < len(line):
        char = line[index]
        if not quoted:
            if char == '"':
                quoted, current = True, bytearray()
            index += 1
            continue
        if char == "\\" and index + 1 < len(line):
            following = line[index + 1]
            if following == "x":
                current.append(int(line[index + 2 : index + 4], 16))
                index += 4
                continue
            current.extend(_ESCAPES.get(following, following).encode())
            index += 2
            continue
        if char == '"':
            arguments.append(bytes(current))
            quoted = False
        else:
            current.extend(char.encode())
        index += 1
    return arguments


class RedisMonitor:
    """Records every command a Redis server receives (MONITOR), from a background thread."""

    def __init__(self, port: int):
        self._socket = socket.create_connection(("127.0.0.1", port))
        self._socket.sendall(b"MONITOR\r\n")
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._socket.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\r\n")
            self.lines.extend(line.decode("utf-8", "replace") for line in complete)

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=5)


def decoded_texts(raw: bytes, depth: int = 0):
    """The text of `raw`, and of what it holds: JSON values, base64 bodies, recursively."""
    text = raw.decode("utf-8", "replace")
    yield text
    if depth > 4:
        return
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if value is not None:
        yield from _json_texts(value, depth)
    if _BASE64.match(raw.strip() or b"-"):
        try:
            decoded = base64.b64decode(raw)
        except binascii.Error:
            decoded = b""
        if decoded:
            yield from decoded_texts(decoded, depth + 1)


def _json_texts(value, depth):
    if isinstance(value, str):
        yield from decoded_texts(value.encode(), depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _json_texts(item, depth)
    elif isinstance(value, list):
        for item in value:
            yield from _json_texts(item, depth)


class LogCapture(logging.Handler):
    """Every record of this process at DEBUG and above, formatted with its traceback."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(logging.Formatter().format(record))


@pytest.fixture
def web_logs():
    handler = LogCapture()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.mark.long
def test_no_personal_data_or_secret_leaves_the_database(
    start_worker, upstream, private_redis, settings, web_logs, report_figure
):
    # Gamma is not provisioned yet: DeployCenter creates it below.
    for name in (ALPHA, BETA):
        MailDomain.objects.create(name=name)
    token = secrets.token_hex(4)
    siret = "81234567800019"
    api_key = f"dc-api-key-{secrets.token_hex(8)}"
    provisioning_key = f"prov-key-{secrets.token_hex(8)}"
    emails = [f"agathe.{token}{index}@mairie-{token}.example.org" for index in range(3)]
    stub = DeployCenterStub(api_key=api_key).start()
    stub.accounts["organizations"].append(
        {"siret": siret, "name": "Mairie", "subscribed": True, "admins": {}}
    )
    for email in emails:
        stub.set_admin_domains(email, [ALPHA, GAMMA], siret=siret)
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = stub.backend_parameters()
    settings.PROVISIONING_API_KEY = provisioning_key
    settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS = 0
    private_redis.start()
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": private_redis.url},
    }
    cache.close()
    monitor = RedisMonitor(private_redis.port)
    try:
        worker = start_worker(
            concurrency=2,
            redis_url=private_redis.url,
            loglevel="DEBUG",
            LOG_LEVEL="DEBUG",
            PROVISIONING_API_KEY=provisioning_key,
        )
        with producer_app(private_redis.url):
            provider = FakeProvider(settings)
            for email in emails:
                browser = provider.login({"sub": f"sub-{email}", "email": email, "siret": siret})
                assert "_auth_user_id" in browser.session
            users = list(User.objects.filter(email__in=emails))
            wait_until(
                lambda: all(synced_domains(user) == {ALPHA} for user in users),
                message="the login syncs",
            )
            # DeployCenter provisions gamma: those it names get it at once.
            provisioned = Client().post(
                "/api/v1.0/provisioning/maildomains/",
                {"domains": [GAMMA], "custom_attributes": {"siret": siret}},
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {provisioning_key}",
            )
            assert provisioned.status_code == 200, provisioned.content
            assert all(synced_domains(user) == {ALPHA, GAMMA} for user in users)
            # An outage: the sync is retried, then the upstream comes back.
            stub.fail_with(503)
            request_sync(user=users[0], trigger="admin")
            wait_until(
                lambda: EntitlementSyncState.objects.filter(
                    user=users[0], status="unavailable"
                ).exists(),
                message="a failed attempt",
            )
            stub.recover()
            for email in emails:
                stub.set_admin_domains(email, [ALPHA, BETA], siret=siret)
            request_resync(maildomain=MailDomain.objects.get(name=ALPHA), trigger="admin")
            request_resync(trigger="periodic")
            wait_until(
                lambda: (
                    all(synced_domains(user) == {ALPHA, BETA} for user in users)
                    and not SyncRun.objects.filter(status="running").exists()
                ),
                timeout=60,
                message="every sync",
            )
        worker.stop()
    finally:
        monitor.close()
        stub.stop()
        cache.close()

    secrets_by_name = {
        "DeployCenter API key": [api_key],
        "provisioning key": [provisioning_key],
        "OIDC tokens and client secret": [*provider.issued_tokens, CLIENT_SECRET],
        "siret claim value": [siret],
        # Also as a URL or a form would encode them.
        "emails": [form for email in emails for form in (email, quote(email), quote_plus(email))],
        "local parts of emails": [email.split("@")[0] for email in emails],
    }
    broker_texts = [
        text
        for line in monitor.lines
        for argument in monitor_arguments(line)
        for text in decoded_texts(argument)
    ]
    results = [
        json.dumps(model_to_dict(result), default=str) for result in TaskResult.objects.all()
    ]
    sources = {
        "broker commands (MONITOR)": broker_texts,
        "result backend rows": results,
        "worker log": [worker.log()],
        "web and test process log": web_logs.texts,
    }
    # The search can find what it looks for: user ids travel in task arguments inside base64
    # message bodies, and the worker logs them.
    assert any(text.startswith('[["') and str(users[0].pk) in text for text in broker_texts)
    assert all(str(user.pk) in worker.log() for user in users)
    assert "DEBUG" in worker.log()
    found = [
        f"{what} in {where}"
        for where, texts in sources.items()
        for what, values in secrets_by_name.items()
        if any(value in text for text in texts for value in values)
    ]
    assert not found, found
    commands = len(monitor.lines)
    report_figure(
        f"faults/personal data: {commands} Redis commands (decoded), {len(results)} task "
        f"results, {len(worker.log().splitlines())} worker log lines at DEBUG and "
        f"{len(web_logs.texts)} web log records searched for {len(emails)} emails and their "
        f"local parts, the siret, the DeployCenter and provisioning keys, OIDC tokens: 0 found"
    )
