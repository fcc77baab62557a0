"""DeployCenter backend: one GET per user, classified as docs/entitlements.md's table says."""

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool
from urllib3.exceptions import (
    ClosedPoolError,
    DecodeError,
    InvalidHeader,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    SSLError,
)

from core import metrics
from core.entitlements.backends.base import AnswerKind, EntitlementsBackend, UpstreamAnswer
from core.validators import normalize_email

logger = logging.getLogger(__name__)

# DeployCenter may call our metrics endpoint back (30 s timeout) before it answers, so a slow
# answer is normal: the read timeout leaves room for that.
DEFAULT_TIMEOUT = (5.0, 35.0)
# A real answer is a few hundred bytes; anything past this is not an answer we can trust, and
# reading it all would let a broken upstream exhaust a worker's memory.
MAX_BODY_BYTES = 1_000_000
# Connections kept per worker process; a prefork child runs one sync at a time, threads more.
POOL_MAXSIZE = 10
# DeployCenter answers 400 without it: a sync without it is our request error, not a denial.
REQUIRED_CLAIM = "siret"
# A siret is 14 digits (INSEE): DeployCenter finds no organisation with anything else.
_SIRET = re.compile(r"[0-9]{14}")
_QUERY_PARAMS = frozenset({"service_id", "account_type", "account_email", "account_id"})
# A `can_access_reason` is recorded as our error code only when it looks like a short token.
# The organisation's subscription ended: the one reason that says something (no rights); every
# other (e.g. no_organization: an unknown siret, often a claim problem) says nothing.
ACCESS_ENDED_REASON = "not_activated"
_REASON_TOKEN = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class DeployCenterEntitlementsBackend(EntitlementsBackend):
    """Asks DeployCenter's entitlements endpoint which mail domains a user may administer."""

    def __init__(
        self,
        *,
        base_url: str,
        service_id: int | str,
        api_key: str,
        timeout: float | Sequence[float] = DEFAULT_TIMEOUT,
        oidc_claims: Sequence[str] = (REQUIRED_CLAIM,),
    ):
        self.base_url = _checked_base_url(base_url)
        self.service_id = _checked_service_id(service_id)
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be a non-empty string")
        if any(character.isspace() for character in api_key.strip()):
            raise ValueError("api_key must not contain spaces or line breaks")
        self.timeout = _checked_timeout(timeout)
        self.oidc_claims = _checked_claims(oidc_claims)
        self._headers = {
            # What a requests Session sends (User-Agent, Accept-Encoding, keep-alive).
            **requests.utils.default_headers(),
            # "Bearer" is case-sensitive upstream. Never an Authorization header (nothing adds
            # one, not even ~/.netrc): DeployCenter would validate it against its OIDC
            # provider first and fail.
            "X-Service-Auth": f"Bearer {api_key.strip()}",
            "Accept": "application/json",
        }
        self._timeout = urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1])
        # The connection pool to DeployCenter and the request target, chosen once as requests
        # would choose them at every call: a call is then one `urlopen`, without requests'
        # per-call preparation and response wrapping (figure 15h of docs/performance.md).
        self._pool, self._target = _connection(self.base_url)

    @property
    def forwarded_claim_names(self) -> list[str]:
        """The OIDC claims sent as query parameters (siret at least)."""
        return list(self.oidc_claims)

    def clean_claim(self, name: str, value: Any) -> str | None:
        """A forwarded claim as stored; a siret only when it is 14 digits."""
        value = super().clean_claim(name, value)
        if name == REQUIRED_CLAIM and value is not None and not _SIRET.fullmatch(value):
            return None
        return value

    def get_entitlements(self, *, user, forwarded_claims: Mapping[str, Any]) -> UpstreamAnswer:
        """Query DeployCenter for this user and classify its answer; never raises for it."""
        email = normalize_email(user.email)
        if "@" not in email:
            return UpstreamAnswer.failure(AnswerKind.NOT_ASKED, "missing_email")
        params = {"service_id": self.service_id, "account_type": "user", "account_email": email}
        for name in self.oidc_claims:
            value = _claim_value(forwarded_claims.get(name))
            if value:
                params[name] = value
        if REQUIRED_CLAIM not in params:
            # The answer would be a 400: no need to ask.
            return UpstreamAnswer.failure(AnswerKind.NOT_ASKED, "missing_claim")

        started = time.monotonic()
        status = None
        try:
            status, body = self._get(params)
        except (NewConnectionError, ProtocolError, ProxyError, SSLError, ClosedPoolError):
            # Refused, reset, cut short, a proxy or TLS failure. Caught before the timeouts:
            # urllib3 makes a refused connection a kind of connect timeout.
            answer = UpstreamAnswer.failure(AnswerKind.UNAVAILABLE, "connection_error")
        except urllib3.exceptions.TimeoutError:
            # Connecting, waiting for the answer, or reading its body (also past the deadline).
            answer = UpstreamAnswer.failure(AnswerKind.UNAVAILABLE, "timeout")
        except DecodeError:
            answer = UpstreamAnswer.failure(AnswerKind.INVALID, "not_decodable")
        except (_SettingsError, InvalidHeader):
            # The environment's proxy or TLS settings, or a header: nothing the upstream did.
            answer = UpstreamAnswer.failure(AnswerKind.CONFIGURATION_ERROR, "configuration")
        else:
            answer = classify_response(status=status, body=body)
        elapsed = time.monotonic() - started
        metrics.upstream_answered(answer=answer.kind, seconds=elapsed)
        # Ids and classes only: the query holds the email and the claims. An authoritative
        # answer is the usual case, and the sync logs its outcome: its line is for debugging.
        logger.log(
            logging.DEBUG if answer.is_authoritative else logging.INFO,
            "deploycenter answered for user %s: http %s, %s %s, %.0f ms",
            user.pk,
            status,
            answer.kind,
            answer.error_code,
            elapsed * 1000,
        )
        return answer

    def _get(self, params: dict[str, str]) -> tuple[int, bytes | None]:
        """GET the endpoint; return the status and, for a 200, the body (None if too large)."""
        if self._pool is None:
            raise _SettingsError
        deadline = time.monotonic() + sum(self.timeout)
        # Sent once (no retry), and a redirect is not followed (it means a wrong base_url,
        # e.g. without its trailing slash): its status is reported.
        response = self._pool.urlopen(
            "GET",
            f"{self._target}?{urlencode(params)}",
            headers=self._headers,
            retries=False,
            redirect=False,
            assert_same_host=False,
            timeout=self._timeout,
            preload_content=False,
        )
        try:
            if response.status != 200:
                return response.status, None
            return 200, _read_body(response, deadline=deadline)
        finally:
            # A body read to its end gave the connection back already; one left unread is
            # closed, as requests does.
            response.close()
            response.release_conn()


def classify_response(*, status: int, body: bytes | None) -> UpstreamAnswer:
    """Map an HTTP status (and a 200's body) to what it means for a sync; the one place."""
    if status == 200:
        return classify_body(body)
    if status in (408, 429) or status >= 500:
        return UpstreamAnswer.failure(AnswerKind.UNAVAILABLE, f"http_{status}")
    if status == 400:
        return UpstreamAnswer.failure(AnswerKind.BAD_REQUEST, "bad_request")
    if 300 <= status < 500:
        # 401/403: key or service_id wrong; 3xx/404/405: base_url points somewhere else. The
        # status is the error code: it tells the operator which setting to check.
        return UpstreamAnswer.failure(AnswerKind.CONFIGURATION_ERROR, f"http_{status}")
    return UpstreamAnswer.failure(AnswerKind.INVALID, f"http_{status}")


def classify_body(body: bytes | None) -> UpstreamAnswer:
    """Classify a 200's body: the admin list, no information, or an invalid answer."""
    if body is None:
        return UpstreamAnswer.failure(AnswerKind.INVALID, "too_large")
    try:
        payload = json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_not_json)
    except _DuplicateKeyError:
        return UpstreamAnswer.failure(AnswerKind.INVALID, "duplicate_key")
    except (ValueError, RecursionError):
        return UpstreamAnswer.failure(AnswerKind.INVALID, "not_json")
    if not isinstance(payload, dict):
        return UpstreamAnswer.failure(AnswerKind.INVALID, "not_an_object")
    entitlements = payload.get("entitlements")
    if not isinstance(entitlements, dict):
        return UpstreamAnswer.failure(AnswerKind.INVALID, "no_entitlements")
    if "can_admin_maildomains" not in entitlements:
        # Absent (can_access false) says nothing about admin rights: never "revoke all".
        reason = entitlements.get("can_access_reason")
        if reason == ACCESS_ENDED_REASON:
            return UpstreamAnswer.failure(AnswerKind.ACCESS_ENDED, reason)
        if not (isinstance(reason, str) and _REASON_TOKEN.match(reason)):
            reason = "no_information"
        return UpstreamAnswer.failure(AnswerKind.NO_INFORMATION, reason)
    if entitlements.get("can_access") is not True:
        # The contract pairs the list with can_access true; a list beside anything else is an
        # answer we do not understand, and must not be read as "revoke".
        return UpstreamAnswer.failure(AnswerKind.INVALID, "contradictory")
    domains = entitlements["can_admin_maildomains"]
    if not isinstance(domains, list):
        return UpstreamAnswer.failure(AnswerKind.INVALID, "not_a_list")
    if not all(isinstance(domain, str) for domain in domains):
        return UpstreamAnswer.failure(AnswerKind.INVALID, "not_strings")
    try:
        return UpstreamAnswer.authoritative(domains)
    except ValueError:
        return UpstreamAnswer.failure(AnswerKind.INVALID, "invalid_domain")


class _DuplicateKeyError(ValueError):
    """A JSON object names a key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when it names a key twice.

    Which duplicate wins differs between parsers (Python keeps the last one): an answer whose
    admin list depends on that is not trusted to grant or revoke.
    """
    payload = dict(pairs)
    if len(payload) != len(pairs):
        raise _DuplicateKeyError
    return payload


def _not_json(name: str) -> None:
    """NaN and Infinity are not JSON (DeployCenter's renderer never writes them)."""
    raise ValueError(f"{name} is not JSON")


def _read_body(response: urllib3.BaseHTTPResponse, *, deadline: float) -> bytes | None:
    """Read at most MAX_BODY_BYTES, within the deadline; None when the body is larger."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    body = bytearray()
    for chunk in response.stream(64 * 1024, decode_content=True):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
        # The read timeout is per socket read: a server dripping bytes would never trip it.
        if time.monotonic() > deadline:
            raise urllib3.exceptions.TimeoutError("the body took longer than the timeout")
    return bytes(body)


def _claim_value(value: Any) -> str:
    """A claim as a query value; anything but a non-empty string or integer counts as absent."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value).strip()


class _SettingsError(Exception):
    """The environment's proxy or TLS settings were refused when the backend was built (a
    malformed proxy URL, a CA bundle that is not there): every call is a configuration error."""


def _connection(url: str) -> tuple[HTTPConnectionPool | None, str]:
    """The urllib3 pool requests would send `url` through and the request target on it; no
    pool when the environment's settings are refused.

    Chosen as requests' adapter chooses it at every call, with what the environment gives for
    `url` (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE...), but once per worker process: the
    environment of a running worker does not change, and reading it at every call cost more
    than the call's parsing.
    """
    settings = requests.Session().merge_environment_settings(url, {}, None, None, None)
    proxies, verify, cert = settings["proxies"], settings["verify"], settings["cert"]
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_MAXSIZE)
    request = requests.Request("GET", url).prepare()
    try:
        pool = adapter.get_connection_with_tls_context(request, verify, proxies, cert)
        adapter.cert_verify(pool, url, verify, cert)
    except (requests.RequestException, OSError) as error:
        # The type only: a malformed proxy URL's text may carry the proxy's password.
        logger.warning(
            "deploycenter cannot be reached with the environment's proxy or TLS settings: %s",
            type(error).__name__,
        )
        return None, ""
    # The path, or the whole URL when a plain-HTTP proxy forwards the request.
    return pool, adapter.request_url(request, proxies)


def _checked_base_url(base_url: Any) -> str:
    """The full endpoint URL, slash-terminated (DeployCenter answers 301 without it)."""
    if not isinstance(base_url, str):
        raise ValueError("base_url must be a string")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("base_url must be an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError("base_url must not carry a query or a fragment")
    if not parts.path.endswith("/"):
        raise ValueError(
            "base_url must end with '/' (e.g. https://host/api/v1.0/entitlements/): "
            "DeployCenter redirects the unslashed URL"
        )
    return base_url


def _checked_service_id(service_id: Any) -> str:
    """The service id as sent: a positive integer (DeployCenter fails with a 500 otherwise)."""
    text = str(service_id).strip() if isinstance(service_id, int | str) else ""
    if isinstance(service_id, bool) or not text.isdigit() or int(text) <= 0:
        raise ValueError("service_id must be a positive integer")
    return str(int(text))


def _checked_timeout(timeout: Any) -> tuple[float, float]:
    """(connect, read) seconds, from one number or a list of two."""
    values = timeout if isinstance(timeout, list | tuple) else [timeout, timeout]
    if len(values) != 2 or not all(
        isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        for value in values
    ):
        raise ValueError("timeout must be a positive number or a list [connect, read]")
    return float(values[0]), float(values[1])


def _checked_claims(oidc_claims: Any) -> tuple[str, ...]:
    """Claim names forwarded as query parameters; siret is required by DeployCenter."""
    if not isinstance(oidc_claims, list | tuple) or not all(
        isinstance(name, str) and name for name in oidc_claims
    ):
        raise ValueError("oidc_claims must be a list of claim names")
    if REQUIRED_CLAIM not in oidc_claims:
        raise ValueError(f"oidc_claims must include {REQUIRED_CLAIM!r}: DeployCenter requires it")
    reserved = _QUERY_PARAMS.intersection(oidc_claims)
    if reserved:
        raise ValueError(f"oidc_claims must not name query parameters we set: {sorted(reserved)}")
    return tuple(dict.fromkeys(oidc_claims))
