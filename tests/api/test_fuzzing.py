"""The REST API fuzzed from its own OpenAPI schema: no request makes a 500 or leaks internals.

Schemathesis reads /api/v1.0/schema/ from the WSGI application (no server) and generates
requests that fit the schema (positive) and requests that break it (negative), for every
operation, as three clients: anonymous, a staff admin of a domain (session + CSRF token), and
DeployCenter with the provisioning key. Hypothesis runs derandomized: the same requests every
run. The figures of docs/reliability.md ("Bad input") show in pytest's summary.
"""

import json
import math
from collections import Counter

import hypothesis
import pytest
import schemathesis
from django.conf import settings as django_settings
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from django.utils.crypto import get_random_string
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error

from core.models import MailDomainAccess
from messages.wsgi import application
from tests import figures
from tests.factories import MailDomainAccessFactory, MailDomainFactory, UserFactory

SCHEMA_PATH = "/api/v1.0/schema/?format=json"
PROVISIONING_KEY = "fuzzing-provisioning-key"
CHANGES_TOKEN = "fuzzing-changes-token-0123456789"
# Examples per operation, generation mode and client: 10 operations x 2 modes x 4 clients.
EXAMPLES = 25
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    # No shrinking phase: a failure is reported with the request that made it, at once.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
# Signs that an error body carries an exception's text, a stack trace or SQL. One that the
# request itself carried (an echoed value) is not a leak.
LEAK_MARKERS = (
    "Traceback",
    'File "',
    ".py",
    "line ",
    "Exception",
    "Error:",
    "django.",
    "psycopg",
    "rest_framework",
    "IntegrityError",
    "DataError",
    "SELECT ",
    "INSERT ",
)

# Bodies sent to the provisioning endpoint by the property test.
PROVISIONING_SETTINGS = hypothesis.settings(FUZZ_SETTINGS, max_examples=400)

# Statuses answered, per test, for the printed figures.
_schema_statuses: Counter = Counter()
_provisioning_statuses: Counter = Counter()


@figures.reporter
def _measured() -> list[str]:
    lines = []
    for name, statuses in (
        ("schemathesis, 10 operations x 2 modes x 4 clients", _schema_statuses),
        ("provisioning property test", _provisioning_statuses),
    ):
        if not statuses:
            continue
        answered = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items()))
        server_errors = sum(count for status, count in statuses.items() if status >= 500)
        lines.append(
            f"API fuzzing ({name}): {sum(statuses.values())} generated requests, "
            f"{server_errors} server errors; statuses {answered}"
        )
    return lines


@pytest.fixture
def wsgi_requests_keep_the_test_transaction(db):
    """Call the real WSGI application inside the test's transaction.

    Each request would close the database connection on finishing (and with it the test's
    transaction); Django's own test client disconnects the same handlers.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(wsgi_requests_keep_the_test_transaction):
    return schemathesis.openapi.from_wsgi(SCHEMA_PATH, application)


@pytest.fixture
def world(db, settings):
    """A staff admin of one domain, another user's access on it, both features on."""
    settings.PROVISIONING_API_KEY = PROVISIONING_KEY
    settings.ENTITLEMENTS_CHANGES_TOKEN = (CHANGES_TOKEN,)
    settings.FEATURE_MAILDOMAIN_CREATE = True
    settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = True
    admin = UserFactory(is_staff=True)
    maildomain = MailDomainFactory(name="fuzzed.example.org")
    MailDomainAccessFactory(user=admin, maildomain=maildomain)
    other = MailDomainAccessFactory(
        maildomain=maildomain, source=MailDomainAccess.Source.ENTITLEMENTS
    )
    return {"admin": admin, "maildomain_id": str(maildomain.id), "access_id": str(other.id)}


def _credentials(client: str, world) -> dict[str, dict[str, str]]:
    """The headers and cookies each kind of client sends."""
    if client == "staff-admin":
        # A browser logged in as the admin, with the CSRF token its writes need.
        browser = Client()
        browser.force_login(world["admin"])
        csrf_secret = get_random_string(32)
        return {
            "headers": {"X-CSRFToken": csrf_secret},
            "cookies": {
                django_settings.SESSION_COOKIE_NAME: browser.cookies[
                    django_settings.SESSION_COOKIE_NAME
                ].value,
                django_settings.CSRF_COOKIE_NAME: csrf_secret,
            },
        }
    if client == "provisioning":
        return {"headers": {"Authorization": f"Bearer {PROVISIONING_KEY}"}, "cookies": {}}
    if client == "changes":
        return {"headers": {"Authorization": f"Bearer {CHANGES_TOKEN}"}, "cookies": {}}
    return {"headers": {}, "cookies": {}}


def _strings(value) -> list[str]:
    """Every key and string of a parsed JSON value."""
    found, pending = [], [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            found += [str(key) for key in item]
            pending += item.values()
        elif isinstance(item, list):
            pending += item
        elif isinstance(item, str):
            found.append(item)
    return found


def assert_no_leak(*, status: int, content_type: str, content: bytes, sent: str) -> None:
    """An error body is JSON that names no exception, module, source line or SQL."""
    text = content.decode("utf-8", errors="replace")
    assert content_type == "application/json", f"{status} as {content_type}: {text[:300]}"
    answered = " ".join(_strings(json.loads(text)))
    for marker in LEAK_MARKERS:
        if marker in answered:
            assert marker in sent, f"{marker!r} in a {status} body: {text[:300]}"


def _can_break(operation, fixed: dict[str, str]) -> bool:
    """Whether negative generation has anything to break: a parameter we leave free, a body."""
    free = [
        parameter
        for parameter in operation.iter_parameters()
        if not (parameter.location == "path" and parameter.name in fixed)
    ]
    return bool(free) or bool(operation.body)


def _fuzz(operation, mode, *, credentials: dict, path_parameters: dict[str, str]):
    """Send the generated requests of one operation; fail on a 5xx or a leaking error body."""
    wanted = {
        name: value for name, value in path_parameters.items() if "{" + name + "}" in operation.path
    }
    if mode is schemathesis.GenerationMode.NEGATIVE and not _can_break(operation, wanted):
        return

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=wanted or None))
    def send(case):
        response = case.call_and_validate(
            headers=credentials["headers"],
            cookies=credentials["cookies"],
            checks=[not_a_server_error],
        )
        _schema_statuses[response.status_code] += 1
        if response.status_code >= 400:
            assert_no_leak(
                status=response.status_code,
                content_type=(response.headers.get("content-type") or [""])[0],
                content=response.content,
                sent=repr((case.path_parameters, case.query, case.body)),
            )

    send()


@pytest.mark.long
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
@pytest.mark.parametrize("client", ["anonymous", "staff-admin", "provisioning", "changes"])
def test_no_generated_request_makes_a_server_error(api_schema, world, client, mode):
    credentials = _credentials(client, world)
    path_parameters = (
        {"maildomain_id": world["maildomain_id"], "id": world["access_id"]}
        if client == "staff-admin"
        else {}
    )
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 10

    for operation in operations:
        _fuzz(operation, mode, credentials=credentials, path_parameters=path_parameters)


# --- Provisioning with the right key: any JSON value, any bytes -----------------------------

PROVISIONING_URL = "/api/v1.0/provisioning/maildomains/"
# Every Unicode category, plus characters that broke or could break storage and validation
# (NUL, lone surrogates, the Kelvin sign, a newline, a zero-width space) drawn often.
TRICKY_CHARACTERS = st.sampled_from(["\x00", "\ud800", "\udfff", "\u212a", "\n", "\u200b"])
ANY_TEXT = st.text(st.characters(exclude_categories=()) | TRICKY_CHARACTERS, max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
NAMES = ANY_TEXT | st.from_regex(r"[A-Za-z0-9-]{1,12}(\.[a-z]{2,5}){1,2}\.?", fullmatch=True)
# Close to a valid request: a non-empty list of names, attributes an object.
NEAR_VALID = st.fixed_dictionaries(
    {"domains": st.lists(NAMES, min_size=1, max_size=4)},
    optional={"custom_attributes": st.dictionaries(ANY_TEXT, JSON_VALUES, max_size=4)},
)
ANY_SHAPE = JSON_VALUES | st.fixed_dictionaries(
    {"domains": JSON_VALUES}, optional={"custom_attributes": JSON_VALUES, "extra": JSON_VALUES}
)
REQUESTS = (NEAR_VALID | ANY_SHAPE).map(lambda value: json.dumps(value).encode())
BODIES = REQUESTS | st.binary(max_size=64)


def _reject_constant(name: str):
    raise ValueError(name)


def _refuse_duplicate_keys(pairs):
    keys = [key for key, _value in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key named twice")
    return dict(pairs)


def _depth(value) -> int:
    """How many objects and lists deep a parsed JSON value nests (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def is_valid_provisioning_request(body: bytes, *, maximum: int) -> bool:
    """The contract of docs/api.md, written independently of the serializer."""
    try:
        payload = json.loads(
            body, parse_constant=_reject_constant, object_pairs_hook=_refuse_duplicate_keys
        )
    except (ValueError, RecursionError):
        return False
    if not isinstance(payload, dict):
        return False
    domains = payload.get("domains")
    if isinstance(domains, str):
        # One comma-separated string, blank pieces dropped.
        domains = [piece.strip() for piece in domains.split(",") if piece.strip()]
    if not isinstance(domains, list) or not 1 <= len(domains) <= maximum:
        return False
    if not all(isinstance(name, str) and is_storable_text(name) for name in domains):
        return False
    if "custom_attributes" not in payload:
        return True
    attributes = payload["custom_attributes"]
    return (
        isinstance(attributes, dict)
        and all(is_storable_text(text) for text in _strings(attributes))
        and all(math.isfinite(number) for number in _numbers(attributes))
        and _depth(attributes) <= 10
        and len(json.dumps(attributes, ensure_ascii=False, separators=(",", ":")).encode()) <= 65536
    )


def is_storable_text(text: str) -> bool:
    """No NUL and no lone surrogate: what PostgreSQL and DRF's CharField accept."""
    return "\x00" not in text and not any("\ud800" <= char <= "\udfff" for char in text)


def _numbers(value) -> list[float]:
    """Every float of a parsed JSON value."""
    found, pending = [], [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending += item.values()
        elif isinstance(item, list):
            pending += item
        elif isinstance(item, float):
            found.append(item)
    return found


@pytest.mark.django_db
def test_provisioning_answers_every_body_with_200_if_valid_else_400(settings):
    settings.PROVISIONING_API_KEY = PROVISIONING_KEY
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {PROVISIONING_KEY}")
    statuses = _provisioning_statuses

    @PROVISIONING_SETTINGS
    @given(body=BODIES)
    def post(body):
        response = client.generic("POST", PROVISIONING_URL, body, content_type="application/json")
        statuses[response.status_code] += 1
        maximum = settings.PROVISIONING_MAX_DOMAINS
        expected = 200 if is_valid_provisioning_request(body, maximum=maximum) else 400
        assert response.status_code == expected, (body, response.content[:300])
        if expected == 400:
            assert_no_leak(
                status=400,
                content_type=response["Content-Type"],
                content=response.content,
                sent=body.decode("utf-8", errors="replace"),
            )

    post()
    # Both outcomes were really exercised.
    assert statuses[200] >= 50 and statuses[400] >= 100, statuses
