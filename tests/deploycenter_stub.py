"""A local DeployCenter: a real threaded HTTP server that answers the entitlements endpoint as
the live service does (docs/entitlements.md, "The DeployCenter contract"), from a table of
accounts, with a latency like the live one's (or a fixed one, or none), forced status codes,
raw bodies and hangs.

Used by the tests through the `deploycenter_stub` fixture, and on its own for demos and
benchmarks:

    python -m tests.deploycenter_stub --port 8900 [--accounts accounts.json]
        [--service-id 3] [--api-key KEY] [--latency 0.02 | --latency realistic]

The accounts file has the shape of DEFAULT_ACCOUNTS below.

Like the live service, it sends webhooks from a `webhooks` config (a list of {url, method,
event_types, headers, body, timeout}, rendered with `$val` / `$tpl`) when an account's admin
domains or an organisation's subscription change: synchronously, before the change is visible
(`commit_delay` seconds later), never retried. On its own, it sends one such webhook:

    python -m tests.deploycenter_stub send --webhooks webhooks.json account.updated EMAIL
    python -m tests.deploycenter_stub send --webhooks webhooks.json subscription.updated SIRET
"""

import argparse
import copy
import json
import math
import random
import re
import ssl
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

ENDPOINT_PATH = "/api/v1.0/entitlements/"
DEFAULT_SERVICE_ID = 3
DEFAULT_API_KEY = "stub-service-key"
ALPHA_SIRET = "12345678900017"
GAMMA_SIRET = "98765432100019"

# The world of the recorded samples: one subscribed commune with an unscoped and a scoped admin,
# one commune without a subscription. Admin lists are gathered across every organisation whose
# subscription is active (`subscribed`), like the live service.
DEFAULT_ACCOUNTS: dict[str, Any] = {
    "operator": {"name": "Demo Operator", "url": "https://operator.example.fr"},
    "organizations": [
        {
            "siret": ALPHA_SIRET,
            "name": "Commune d'Alpha",
            "type": "commune",
            "subscribed": True,
            "admins": {
                "admin@alpha.example.org": ["alpha.example.org", "beta.example.org"],
                "scoped@alpha.example.org": ["beta.example.org"],
            },
        },
        {
            "siret": GAMMA_SIRET,
            "name": "Commune de Gamma",
            "type": "commune",
            "subscribed": False,
            "admins": {},
        },
    ],
}

REQUIRED = "Ce champ est obligatoire."
BLANK = "Ce champ ne peut être vide."
BAD_EMAIL = "Saisissez une adresse e-mail valide."
NO_ACCOUNT = "Either 'account_id' or 'account_email' must be provided."
NOT_AUTHENTICATED = "Informations d'authentification non fournies."
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SERVER_ERROR_HTML = b"<!doctype html><html><body><h1>Server Error (500)</h1></body></html>"
_NOT_FOUND_HTML = b"<!doctype html><html><body><h1>Not Found</h1></body></html>"
# Size of each chunk of a chunked answer (`answer_raw(..., chunked=True)`).
_CHUNK_BYTES = 64 * 1024

# The live service's latency on loopback (docs/entitlements.md, "The DeployCenter contract"):
# a 200 takes about 24 ms (median; p90 about 37 ms), a refusal before any lookup (401, 400,
# 405) about 12 ms. Drawn from a log-normal with that median and spread.
REALISTIC = "realistic"
_MEDIAN_SECONDS = {"answer": 0.024, "refusal": 0.012}
# ln(p90 / median) / z(0.9): 37 ms at the 90th percentile of a 24 ms median.
_LOG_SPREAD = math.log(0.037 / 0.024) / 1.2816


# The webhook's default headers and timeout (DeployCenter's core/webhooks.py).
_WEBHOOK_HEADERS = {"Content-Type": "application/json", "User-Agent": "DeployCenter-Webhook/1.0"}
_WEBHOOK_TIMEOUT = 10
_TEMPLATE_VARIABLE = re.compile(r"\{\{(\w+)\}\}")


def render_template(template: Any, context: dict[str, Any]) -> Any:
    """A webhook body or headers template rendered as DeployCenter does: `{"$val": key}` is the
    context's value (None when absent), `{"$tpl": "... {{key}} ..."}` a string; the rest as is."""
    if isinstance(template, dict):
        if len(template) == 1 and "$val" in template:
            return context.get(template["$val"])
        if len(template) == 1 and "$tpl" in template:
            return _TEMPLATE_VARIABLE.sub(
                lambda match: str(context.get(match.group(1), "")), template["$tpl"]
            )
        return {key: render_template(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [render_template(item, context) for item in template]
    return template


def send_webhooks(webhooks: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]]:
    """Send the event of `context` to every webhook configured for its type, one after the
    other and waiting for each answer; a failure is only recorded (no retry), like DeployCenter."""
    results = []
    for webhook in webhooks:
        event_types = webhook.get("event_types") or []
        if event_types and context["event_type"] not in event_types:
            continue
        method = webhook.get("method", "POST").upper()
        headers = {
            **_WEBHOOK_HEADERS,
            **{
                name: str(value)
                for name, value in render_template(webhook.get("headers") or {}, context).items()
            },
        }
        body = render_template(webhook.get("body") or {}, context) or {
            "event_type": context["event_type"],
            "timestamp": context["timestamp"],
        }
        try:
            response = requests.request(
                method,
                webhook["url"],
                headers=headers,
                json=body if method in ("POST", "PUT", "PATCH") else None,
                timeout=webhook.get("timeout", _WEBHOOK_TIMEOUT),
            )
            response.raise_for_status()
            results.append({"url": webhook["url"], "status": response.status_code, "ok": True})
        except requests.RequestException as error:
            status = error.response.status_code if error.response is not None else None
            results.append({"url": webhook["url"], "status": status, "ok": False})
    return results


def webhook_context(
    event_type: str,
    organization: dict[str, Any],
    *,
    service_id: int = DEFAULT_SERVICE_ID,
    account_email: str | None = None,
    subscribed: bool | None = None,
) -> dict[str, Any]:
    """The webhook context DeployCenter builds for an event (the keys we read, and some)."""
    siret = organization["siret"]
    domains = sorted({d for each in organization.get("admins", {}).values() for d in each})
    context = {
        "event_type": event_type,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "subscription_id": _stable_id(f"subscription:{siret}"),
        "subscription_is_active": (
            organization.get("subscribed", False) if subscribed is None else subscribed
        ),
        "subscription_metadata": {"domains": domains},
        "subscription_domains": ",".join(domains),
        "organization_id": _stable_id(f"organization:{siret}"),
        "organization_name": organization["name"],
        "organization_siret": siret,
        "organization_siren": siret[:9],
        "service_id": service_id,
        "service_name": "Messages",
        "user_email": "operator@deploycenter.example.org",
    }
    if account_email is not None:
        context.update(
            {
                "account_id": _stable_id(f"account:{account_email}"),
                "account_email": account_email,
                "account_external_id": None,
                "account_type": "user",
                "account_roles": [],
            }
        )
    return context


def _stable_id(name: str) -> str:
    """Ids that stay the same across runs (the live service's are random UUIDs)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"deploycenter-stub:{name}"))


class DeployCenterStub:
    """The stub server and its runtime switches; every switch is safe to flip from a test."""

    def __init__(
        self,
        *,
        accounts: dict[str, Any] | None = None,
        service_id: int = DEFAULT_SERVICE_ID,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        latency: float | str = REALISTIC,
        webhooks: list[dict[str, Any]] | None = None,
        commit_delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
    ):
        """`latency`: REALISTIC (the default, like the live service), or fixed seconds added
        to every answer (0 for none); `webhooks`: the service's webhooks config; a change
        becomes visible `commit_delay` seconds after its webhooks were answered. `reset`
        comes back to these. With an `ssl_context` (its certificate loaded) it answers HTTPS."""
        self.service_id = service_id
        self.api_key = api_key
        self.default_latency = latency
        self._default_webhooks = copy.deepcopy(webhooks or [])
        self._default_commit_delay = commit_delay
        self._commits: list[threading.Timer] = []
        self._random = random.Random(0)
        self._default_accounts = copy.deepcopy(accounts or DEFAULT_ACCOUNTS)
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = _StubServer((host, port), _Handler)
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "http" if ssl_context is None else "https"
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server.stub = self
        self._server.verbose = verbose
        self._thread: threading.Thread | None = None
        self.reset()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "DeployCenterStub":
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the command-line use)."""
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._server.server_close()

    def stop(self) -> None:
        """Stop serving and release any hung request."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "DeployCenterStub":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint URL, slash-terminated, as DeployCenter's base_url."""
        host, port = self._server.server_address[:2]
        return f"{self._scheme}://{host}:{port}{ENDPOINT_PATH}"

    def backend_parameters(self, **overrides) -> dict[str, Any]:
        """ENTITLEMENTS_BACKEND_PARAMETERS for the DeployCenter backend pointed at this stub."""
        return {
            "base_url": self.url,
            "service_id": self.service_id,
            "api_key": self.api_key,
            "timeout": [2.0, 2.0],
            **overrides,
        }

    # --- switches ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Default accounts, latency and webhooks, no forced answer, no hang, no change
        waiting to become visible; counters at zero."""
        with self._lock:
            self._release.set()  # wake requests hung by a previous test
            self._release = threading.Event()
            for commit in self._commits:
                commit.cancel()
            self._commits = []
            self.webhooks = copy.deepcopy(self._default_webhooks)
            self.commit_delay = self._default_commit_delay
            # What each webhook sent got: {"url", "status", "ok", "event_type", "sent_at"}.
            self.webhook_results: list[dict[str, Any]] = []
            self.accounts = copy.deepcopy(self._default_accounts)
            self.latency = self.default_latency
            self.hang_seconds = 0.0
            # (status, headers, body) given to every request while set.
            self.forced: tuple[int, dict[str, str], bytes] | None = None
            self.calls = 0
            # TCP connections accepted: a client that keeps its connections alive opens few.
            self.connections_opened = 0
            self.requests: list[dict[str, Any]] = []

    def reset_counters(self) -> None:
        """Forget the requests and webhooks seen so far (a test's set-up is not its subject)."""
        with self._lock:
            self.calls = 0
            self.requests = []
            self.webhook_results = []

    @contextmanager
    def quietly(self):
        """Make changes inside without sending webhooks (a test's set-up)."""
        webhooks, self.webhooks = self.webhooks, []
        try:
            yield
        finally:
            self.webhooks = webhooks

    def fail_with(self, status: int, body: bytes = b"", content_type: str = "text/html") -> None:
        """Answer every request with this status and body (503, 429, 500...)."""
        self.forced = (status, {"Content-Type": content_type}, body)

    def answer_raw(
        self,
        body: bytes,
        *,
        status: int = 200,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> None:
        """Answer every request with this raw body (malformed JSON, HTML, a huge body...).

        `headers` adds or replaces response headers: a `Content-Encoding` the body does not
        honour, or a `Content-Length` that lies (the connection is closed after the body).
        `chunked` streams the body in chunks with no `Content-Length`, so a client cannot
        refuse it from the headers and must stop reading by itself.
        """
        forced_headers = {"Content-Type": content_type, **(headers or {})}
        if chunked:
            forced_headers["Transfer-Encoding"] = "chunked"
        self.forced = (status, forced_headers, body)

    def recover(self) -> None:
        """Stop forcing answers and hanging: answer per the contract again."""
        self.forced = None
        self.hang_seconds = 0.0

    def hang(self, seconds: float) -> None:
        """Wait this long before answering (released early by reset or stop)."""
        self.hang_seconds = seconds

    def set_admin_domains(self, email: str, domains: list[str], *, siret: str = ALPHA_SIRET):
        """Make `email` admin of `domains` in the organisation `siret` ([] removes the link).

        While the organisation is subscribed, an `account.updated` webhook goes first.
        """
        organization = self._existing_organization(siret)

        def apply() -> None:
            if domains:
                organization.setdefault("admins", {})[email] = list(domains)
            else:
                organization.get("admins", {}).pop(email, None)

        # DeployCenter sends account events for the active subscriptions of the account's
        # organisation only.
        event = webhook_context(
            "account.updated", organization, service_id=self.service_id, account_email=email
        )
        self._change(apply, event if organization.get("subscribed") else None)

    def set_subscribed(self, siret: str, subscribed: bool) -> None:
        """Subscribe or unsubscribe an organisation to the service: its admins' domains are
        named only while its subscription is active. A `subscription.updated` webhook goes
        first."""
        organization = self._existing_organization(siret)

        def apply() -> None:
            organization["subscribed"] = subscribed

        event = webhook_context(
            "subscription.updated", organization, service_id=self.service_id, subscribed=subscribed
        )
        self._change(apply, event)

    # --- webhooks ----------------------------------------------------------------------------

    def _existing_organization(self, siret: str) -> dict[str, Any]:
        with self._lock:
            organization = self._organization(siret)
        if organization is None:
            raise KeyError(f"no organisation with siret {siret}")
        return organization

    def _change(self, apply, event: dict[str, Any] | None) -> None:
        """Make a change as DeployCenter does: its webhooks are sent and answered inside the
        transaction, and the change becomes visible `commit_delay` seconds after."""
        if event is not None and self.webhooks:
            for result in send_webhooks(self.webhooks, event):
                self.webhook_results.append(
                    {**result, "event_type": event["event_type"], "sent_at": time.monotonic()}
                )

        def commit() -> None:
            with self._lock:
                apply()

        if not self.commit_delay:
            commit()
            return
        timer = threading.Timer(self.commit_delay, commit)
        timer.daemon = True
        with self._lock:
            self._commits.append(timer)
        timer.start()

    # --- answering ---------------------------------------------------------------------------

    def _organization(self, siret: str) -> dict[str, Any] | None:
        """The organisation with this siret, if any."""
        for organization in self.accounts["organizations"]:
            if organization["siret"] == siret:
                return organization
        return None

    def _record(self, method: str, path: str, query: dict[str, list[str]], headers) -> None:
        with self._lock:
            self.calls += 1
            self.requests.append(
                {
                    "method": method,
                    "path": path,
                    "query": query,
                    "headers": dict(headers),
                    # When it arrived (time.monotonic()), to measure the rate the stub sees.
                    "at": time.monotonic(),
                }
            )

    def answer(
        self, method: str, path: str, raw_query: str, headers
    ) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body DeployCenter gives this request."""
        query = parse_qs(raw_query, keep_blank_values=True)
        self._record(method, path, query, headers)
        if self.hang_seconds:
            self._release.wait(self.hang_seconds)
        if self.forced:
            status, headers, body = self.forced
            self._wait(status)
            return status, dict(headers), body
        status, headers, body = self._answer(method, path, raw_query, query, headers)
        self._wait(status)
        return status, headers, body

    def latency_for(self, status: int) -> float:
        """Seconds the stub takes to give this status: drawn when the latency is REALISTIC."""
        if self.latency != REALISTIC:
            return self.latency
        median = _MEDIAN_SECONDS["answer" if status == 200 else "refusal"]
        with self._lock:
            return median * math.exp(self._random.gauss(0, _LOG_SPREAD))

    def _wait(self, status: int) -> None:
        """Take as long as the live service would to give this status."""
        latency = self.latency_for(status)
        if latency:
            time.sleep(latency)

    def _answer(
        self, method: str, path: str, raw_query: str, query: dict[str, list[str]], headers
    ) -> tuple[int, dict[str, str], bytes]:
        """The answer per the contract, before its latency."""
        if path == ENDPOINT_PATH.rstrip("/"):
            location = ENDPOINT_PATH + (f"?{raw_query}" if raw_query else "")
            return 301, {"Location": location, "Content-Type": "text/html; charset=utf-8"}, b""
        if path != ENDPOINT_PATH:
            return 404, {"Content-Type": "text/html; charset=utf-8"}, _NOT_FOUND_HTML
        params = {name: values[0] for name, values in query.items()}
        service_id = params.get("service_id", "")
        if service_id and not service_id.isdigit():
            return 500, {"Content-Type": "text/html; charset=utf-8"}, _SERVER_ERROR_HTML
        if (
            "Authorization" in headers
            or headers.get("X-Service-Auth") != f"Bearer {self.api_key}"
            or service_id != str(self.service_id)
        ):
            return _json(
                401,
                {"detail": NOT_AUTHENTICATED},
                {"WWW-Authenticate": 'Bearer realm="api"'},
            )
        if method not in ("GET", "HEAD"):
            return _json(
                405,
                {"detail": f"Méthode « {method} » non autorisée."},
                {"Allow": "GET, HEAD, OPTIONS"},
            )
        errors = _validation_errors(params)
        if errors:
            return _json(400, errors)
        with self._lock:
            return _json(200, self._entitlements(params))

    def _entitlements(self, params: dict[str, str]) -> dict[str, Any]:
        """The 200 body for a valid request."""
        organization = self._organization(params["siret"])
        if organization is None:
            return {
                "organization": None,
                "operator": None,
                "entitlements": {"can_access": False, "can_access_reason": "no_organization"},
            }
        operator = self._operator()
        organization_body = {
            "id": _stable_id(f"organization:{organization['siret']}"),
            "type": organization.get("type", "commune"),
            "name": organization["name"],
            "oidc_valid": None,
        }
        if not organization.get("subscribed"):
            signup = (
                "https://suiteterritoriale.anct.gouv.fr/bienvenue/"
                f"{organization['siret']}/contact?operator={operator['id']}"
                f"&services={self.service_id}"
            )
            return {
                "organization": organization_body,
                "operator": None,
                "entitlements": {"can_access": False, "can_access_reason": "not_activated"},
                "potentialOperators": [{**operator, "signupUrl": signup}],
            }
        # Matched exactly and case-sensitively, like the live service; only organisations
        # whose subscription is active name their domains.
        email = params.get("account_email", "")
        domains: dict[str, None] = {}
        for each in self.accounts["organizations"]:
            if each.get("subscribed"):
                domains.update(dict.fromkeys(each.get("admins", {}).get(email, [])))
        return {
            "organization": organization_body,
            "operator": operator,
            "entitlements": {
                "can_access": True,
                "can_store": False,
                "can_store_resolve_level": "organization",
                "can_admin_maildomains": list(domains),
            },
        }

    def _operator(self) -> dict[str, Any]:
        operator = self.accounts.get("operator", DEFAULT_ACCOUNTS["operator"])
        return {
            "id": _stable_id("operator"),
            "name": operator["name"],
            "siret": "",
            "url": operator["url"],
            "config": {},
        }


def _validation_errors(params: dict[str, str]) -> dict[str, list[str]]:
    """DRF-style field errors, then the cross-field error, in French as the live service.

    `account_type` must be there and not blank; any value goes (`mailbox` answers like `user`).
    """
    errors: dict[str, list[str]] = {}
    for field in ("account_type", "siret"):
        if field not in params:
            errors[field] = [REQUIRED]
        elif not params[field].strip():
            errors[field] = [BLANK]
    email = params.get("account_email")
    if email is not None and not email:
        errors["account_email"] = [BLANK]
    elif email is not None and not _EMAIL.match(email):
        errors["account_email"] = [BAD_EMAIL]
    if not errors and not params.get("account_email") and not params.get("account_id"):
        errors["non_field_errors"] = [NO_ACCOUNT]
    return errors


def _json(
    status: int, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return (
        status,
        {"Content-Type": "application/json", "Vary": "Accept", **(headers or {})},
        json.dumps(body, ensure_ascii=False).encode(),
    )


class _StubServer(ThreadingHTTPServer):
    """A threaded HTTP server that stays quiet when a client drops its connection."""

    # socketserver listens with a backlog of 5: twenty syncs connecting at once on a busy
    # machine overflow it, the kernel drops SYNs, and the client's retry after 1 s then 3 s
    # outlasts its 2 s connect timeout. A real server (gunicorn: 2048) queues them.
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        # A client that stops reading a huge body resets the connection: expected, not news.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the stub; keeps connections alive like a real server."""

    protocol_version = "HTTP/1.1"
    server_version = "DeployCenterStub/1.0"
    # Headers and body go out in two writes: without TCP_NODELAY the body would wait for the
    # client's delayed ACK (Nagle), about 40 ms per kept-alive answer that the live server
    # (gunicorn sets TCP_NODELAY) does not have. The latency is the `latency` parameter's.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        with self.server.stub._lock:
            self.server.stub.connections_opened += 1

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        parts = urlsplit(self.path)
        status, headers, body = self.server.stub.answer(
            self.command, parts.path, parts.query, self.headers
        )
        chunked = headers.get("Transfer-Encoding") == "chunked"
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" in headers:
                # A forced length may lie: the connection cannot carry another answer.
                self.close_connection = True
            elif not chunked:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self._write_body(body, chunked=chunked)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout fired during a hang): nothing to answer.
            self.close_connection = True

    def _write_body(self, body: bytes, *, chunked: bool) -> None:
        if not chunked:
            self.wfile.write(body)
            return
        view = memoryview(body)
        for start in range(0, len(view), _CHUNK_BYTES):
            piece = view[start : start + _CHUNK_BYTES]
            self.wfile.write(b"%x\r\n" % len(piece))
            self.wfile.write(piece)
            self.wfile.write(b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format, *args) -> None:
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)


def _latency(value: str) -> float | str:
    """argparse type of --latency: 'realistic' or a number of seconds."""
    return value if value == REALISTIC else float(value)


def send_main(argv: list[str]) -> int:
    """`send`: one webhook of an account's or an organisation's change, as DeployCenter sends
    it from the webhooks config; prints what each endpoint answered."""
    parser = argparse.ArgumentParser(prog="python -m tests.deploycenter_stub send")
    parser.add_argument("--webhooks", required=True, help="JSON file: the webhooks config")
    parser.add_argument(
        "event_type",
        choices=[
            "account.updated",
            "subscription.created",
            "subscription.updated",
            "subscription.deleted",
        ],
    )
    parser.add_argument("who", help="the account's e-mail, or the organisation's siret")
    args = parser.parse_args(argv)
    with open(args.webhooks) as webhooks_file:
        webhooks = json.load(webhooks_file)
    organization = {"siret": "", "name": "", "subscribed": True}
    if args.event_type == "account.updated":
        context = webhook_context(args.event_type, organization, account_email=args.who)
    else:
        organization["siret"] = args.who
        deleted = args.event_type == "subscription.deleted"
        context = webhook_context(args.event_type, organization, subscribed=not deleted)
    results = send_webhooks(webhooks, context)
    for result in results:
        print(f"{result['url']}: {result['status'] or 'no answer'}")
    return 0 if results and all(result["ok"] for result in results) else 1


def main() -> None:
    """Run the stub in the foreground until interrupted (or `send` one webhook)."""
    if sys.argv[1:2] == ["send"]:
        sys.exit(send_main(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--accounts", help="JSON file shaped like DEFAULT_ACCOUNTS")
    parser.add_argument("--service-id", type=int, default=DEFAULT_SERVICE_ID)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument(
        "--latency",
        type=_latency,
        default=REALISTIC,
        help="seconds added per answer, or 'realistic' (the default: like the live service)",
    )
    parser.add_argument("--webhooks", help="JSON file: the webhooks config sent on changes")
    parser.add_argument(
        "--commit-delay",
        type=float,
        default=0.0,
        help="seconds between a change's webhooks and the change becoming visible",
    )
    args = parser.parse_args()
    accounts = None
    if args.accounts:
        with open(args.accounts) as accounts_file:
            accounts = json.load(accounts_file)
    webhooks = None
    if args.webhooks:
        with open(args.webhooks) as webhooks_file:
            webhooks = json.load(webhooks_file)
    stub = DeployCenterStub(
        accounts=accounts,
        service_id=args.service_id,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        verbose=True,
        latency=args.latency,
        webhooks=webhooks,
        commit_delay=args.commit_delay,
    )
    print(f"DeployCenter stub on {stub.url} (service_id={stub.service_id})", flush=True)
    stub.serve_forever()


if __name__ == "__main__":
    main()
