"""Sentry error reporting that sends no secret and no personal data (docs/operations.md)."""

import re
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.argv import ArgvIntegration
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber
from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint
from sentry_sdk.utils import capture_internal_exceptions

from core.validators import IDNA_DOTS

FILTERED = "[Filtered]"
# Values under these keys are replaced wherever the SDK's scrubber looks (request, extra,
# user, breadcrumb and span data): the OIDC flow's tokens and claims, DeployCenter's query.
DENYLIST = (
    *DEFAULT_DENYLIST,
    "access_token",
    "api_key",
    "claims",
    "client_secret",
    "code",
    "email",
    "forwarded_claims",
    "http.query",
    "http.fragment",
    "id_token",
    "nonce",
    "params",
    "payload",
    "query_string",
    "refresh_token",
    "siret",
    "state",
    "token_info",
    "token_payload",
    "user_info",
    "x-service-auth",
    "x_service_auth",
)
# Request headers an operator may need; every other one (cookies, keys) is dropped.
KEPT_HEADERS = frozenset({"accept", "content-length", "content-type", "host", "user-agent"})

# Loggers whose events are never sent: Django's `django.security.*` log at ERROR each request
# with a bad Host header or a tampered OIDC callback state (a 400): anyone could flood the
# project's Sentry with them. They stay in the process's log.
_UNSENT_LOGGERS = ("django.security.",)
# Where an exception comes from the database: its message is the server's, with values.
_DATABASE_MODULES = ("psycopg", "django.db")
# A label separator in an e-mail's domain: a dot, IDNA's equivalents, or one of them
# percent-encoded (UTF-8).
_DOT = f"(?:[.{IDNA_DOTS}]|%2e|%e3%80%82|%ef%bc%8e|%ef%bd%a1)"

# Text scrubbed from every string of an event or breadcrumb (exception messages, log
# messages and their arguments): a message may quote a URL, a database row or a header.
_SCRUBBED_TEXT = (
    # A query string, in an absolute or a relative URL (requests' errors quote the latter).
    (re.compile(r"\?[\w.%\[\]-]+=[^\s\"'<>#]*"), "?" + FILTERED),
    # PostgreSQL's lines after the message quote the statement and the values: `LINE 1:` and
    # `QUERY:` the SQL with its literals, `DETAIL:` the row, `CONTEXT:` the JSON or the
    # function it failed in (over several lines): all of them go, to the end of the text.
    (
        re.compile(
            r"\n(?:LINE \d+|DETAIL|HINT|QUERY|CONTEXT|STATEMENT|WHERE|INTERNAL QUERY):.*",
            re.DOTALL,
        ),
        "\n" + FILTERED,
    ),
    # A DETAIL line quoted elsewhere: "Key (email)=(a@b.c) already exists".
    (re.compile(r"DETAIL:[^\n]*"), "DETAIL: " + FILTERED),
    (re.compile(r"\bKey \(([^)]*)\)=[^\n]*"), r"Key (\1)=" + FILTERED),
    (re.compile(r"Failing row contains \([^\n]*\)"), "Failing row contains " + FILTERED),
    (re.compile(r"\bBearer\s+\S+", re.IGNORECASE), "Bearer " + FILTERED),
    # JSON Web Tokens (OIDC id tokens).
    (re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]*"), FILTERED),
    # E-mail addresses, as written and percent-encoded: every local part character RFC 5322's
    # dot-atom allows, every label separator the e-mail normaliser reads as a dot.
    (
        re.compile(
            rf"[\w.!#$%&'*+/=?^`{{|}}~-]+(?:@|%40)[\w-]+(?:{_DOT}[\w-]+)+{_DOT}?", re.IGNORECASE
        ),
        FILTERED,
    ),
)
# The values a PostgreSQL message quotes: `'literal'`, and `"text"` unless an object's name
# (`constraint "core_user_email_key"`) precedes it.
# A line break, or one escaped in a repr: where a database error's first line ends.
_ESCAPED_NEWLINE = re.compile(r"\n|\\n")
_SQL_LITERAL = re.compile(r"E?'(?:[^']|'')*'")
_SQL_QUOTED = re.compile(r'(\b\w+\s+)?"((?:[^"]|"")*)"')
_SQL_OBJECTS = frozenset(
    {
        "column",
        "constraint",
        "database",
        "function",
        "index",
        "relation",
        "role",
        "schema",
        "sequence",
        "table",
        "trigger",
        "type",
        "view",
    }
)


def init_sentry(*, dsn: str, environment: str, traces_sample_rate: float = 0.0) -> None:
    """Start the Sentry SDK for the web and the worker, with every scrubbing hook installed."""
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        integrations=[
            # Transactions named after the URL pattern, never the path (it may hold an id).
            DjangoIntegration(transaction_style="url"),
            CeleryIntegration(monitor_beat_tasks=True),
        ],
        # A failed command's arguments may hold a claim (`simulate_login --claim siret=...`).
        disabled_integrations=[ArgvIntegration()],
        # send_default_pii stays unset, which means False: sentry-sdk 2.75 deprecates setting
        # it in favour of `data_collection`, and that option would switch the scrubber off.
        # Frame locals hold the OIDC client secret, tokens and claims, and DeployCenter's
        # parameters: no denylist can name them all, so none is sent.
        include_local_variables=False,
        max_request_body_size="never",
        event_scrubber=EventScrubber(denylist=list(DENYLIST), recursive=True),
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
        traces_sample_rate=traces_sample_rate,
    )


def scrub_event(event: Event, hint: Hint) -> Event | None:
    """Keep what an operator needs (exception type, module, task, user id), drop the rest;
    None (not sent) for what anonymous requests can cause at will."""
    if str(event.get("logger", "")).startswith(_UNSENT_LOGGERS):
        return None
    database_error = False
    for value in (event.get("exception") or {}).get("values") or ():
        if isinstance(value, dict) and str(value.get("module", "")).startswith(_DATABASE_MODULES):
            value["value"] = database_message(str(value.get("value", "")))
            database_error = True
    logentry = event.get("logentry")
    if database_error and isinstance(logentry, dict):
        # The log line that reported the database error may quote its text.
        _quote_database_text(logentry)
    request = event.get("request")
    if isinstance(request, dict):
        for key in ("query_string", "cookies", "data", "env"):
            request.pop(key, None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {
                name: value for name, value in headers.items() if name.lower() in KEPT_HEADERS
            }
    user = event.get("user")
    if isinstance(user, dict):
        event["user"] = {"id": user["id"]} if "id" in user else {}
    spans = event.get("spans")
    for span in spans if isinstance(spans, list) else ():
        data = span.get("data") if isinstance(span, dict) else None
        if isinstance(data, dict):
            data.pop("http.query", None)
            data.pop("http.fragment", None)
            # A template span's context: a form's values, a user's page, a domain's name.
            data.pop("context", None)
    return _scrubbed(event)


def scrub_breadcrumb(breadcrumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb:
    """Drop a request's query string and fragment, and scrub the message and data."""
    data = breadcrumb.get("data")
    if isinstance(data, dict):
        data.pop("http.query", None)
        data.pop("http.fragment", None)
    return _scrubbed(breadcrumb)


def scrub_text(text: str) -> str:
    """The text without query strings, database rows, tokens or e-mail addresses."""
    for pattern, replacement in _SCRUBBED_TEXT:
        text = pattern.sub(replacement, text)
    return text


def database_message(text: str) -> str:
    """A database error's first line, its quoted values filtered (object names kept)."""
    message = _SQL_LITERAL.sub(FILTERED, text.split("\n", 1)[0])

    def quoted(match: re.Match) -> str:
        word = (match[1] or "").strip().lower()
        return match[0] if word in _SQL_OBJECTS else f"{match[1] or ''}{FILTERED}"

    return _SQL_QUOTED.sub(quoted, message)


def _quote_database_text(logentry: dict) -> None:
    """A log entry's message and arguments with a database error's values filtered; an
    argument may be the error's repr, whose line breaks are escaped."""
    for key in ("message", "formatted"):
        if isinstance(logentry.get(key), str):
            logentry[key] = database_message(_ESCAPED_NEWLINE.split(logentry[key], 1)[0])
    params = logentry.get("params")
    if isinstance(params, list | tuple):
        logentry["params"] = [
            database_message(_ESCAPED_NEWLINE.split(param, 1)[0])
            if isinstance(param, str)
            else param
            for param in params
        ]


def _scrubbed(value: Any) -> Any:
    """Every string of a JSON-like value scrubbed, containers changed in place."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _scrubbed(item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _scrubbed(item)
    elif isinstance(value, tuple):
        return tuple(_scrubbed(item) for item in value)
    return value


def user_id_middleware(get_response):
    """Give the request's Sentry events the user's id, and nothing else about the user."""

    def middleware(request):
        with sentry_sdk.new_scope() as scope:
            scope.add_event_processor(_user_id_processor(request))
            return get_response(request)

    return middleware


def _user_id_processor(request):
    def add_user_id(event, hint):
        # A failed lookup (e.g. the database is what failed) must not lose the event.
        with capture_internal_exceptions():
            user = request.user
            if user.is_authenticated:
                event["user"] = {"id": str(user.pk)}
        return event

    return add_user_id
