"""OIDC providers for mozilla-django-oidc's real code flow: `FakeProvider` answers through
`responses`; `OIDCProvider` is a real provider over HTTP (with JWKS and end_session)."""

import functools
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import requests
import responses
from cryptography.hazmat.primitives.asymmetric import rsa
from django.test import Client

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


class OIDCProvider:
    """A real OpenID provider on a local HTTP server, in a thread of the test process: the app's
    backend calls its token, JWKS and userinfo endpoints over HTTP, and the browser's hops
    (authorize, end_session) are real requests too.

    `user` is who is signed in at the provider (None: nobody, authorize answers 401 as a login
    page would). Codes are single-use (a replay gets 400 invalid_grant), id tokens are RS256
    with a `kid` found at the JWKS endpoint. `broken["/token"] = (status, content_type, body)`
    makes an endpoint answer that instead. `ended_sessions` holds each end_session's query.
    """

    def __init__(self):
        self.user: dict | None = None
        self.broken: dict[str, tuple[int, str, bytes]] = {}
        self.issued_tokens: list[str] = []
        self.ended_sessions: list[dict[str, str]] = []
        self._codes: dict[str, dict] = {}  # code -> {"claims", "nonce", "used"}
        self._userinfo: dict[str, dict] = {}  # access token -> claims
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProviderHandler)
        self._server.daemon_threads = True
        self._server.provider = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "OIDCProvider":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    def configure(self, settings) -> None:
        """Point the app's OIDC settings at this provider."""
        settings.OIDC_RP_CLIENT_ID = "messages"
        settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
        settings.OIDC_RP_SIGN_ALGO = "RS256"
        settings.OIDC_OP_AUTHORIZATION_ENDPOINT = f"{self.url}/authorize"
        settings.OIDC_OP_TOKEN_ENDPOINT = f"{self.url}/token"
        settings.OIDC_OP_USER_ENDPOINT = f"{self.url}/userinfo"
        settings.OIDC_OP_JWKS_ENDPOINT = f"{self.url}/jwks"
        settings.OIDC_OP_LOGOUT_ENDPOINT = f"{self.url}/end_session"

    def authorize(self, browser: Client) -> str:
        """The browser starts a login and the provider answers; return the callback's path and
        query the provider redirects to (AssertionError if it did not)."""
        start = browser.get("/oidc/authenticate/")
        answer = requests.get(start["Location"], allow_redirects=False, timeout=10)
        assert answer.status_code == 302, f"the provider answered {answer.status_code}"
        callback = urlsplit(answer.headers["Location"])
        return f"{callback.path}?{callback.query}"

    def log_in(self, claims: dict, browser: Client | None = None):
        """Sign `claims` in at the provider and run the code flow in the browser (a new one by
        default); return the callback's response (its `.client` is the browser)."""
        browser = browser or Client()
        self.user = claims
        response = browser.get(self.authorize(browser))
        response.client = browser
        return response

    # The handler's side.

    def _issue_code(self, query: dict[str, str]) -> str:
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"claims": self.user, "nonce": query.get("nonce"), "used": False}
        return code

    def _token(self, form: dict[str, str]) -> tuple[int, dict]:
        if form.get("client_secret") != CLIENT_SECRET:
            return 401, {"error": "invalid_client"}
        grant = self._codes.get(form.get("code", ""))
        if grant is None or grant["used"]:
            # As providers do, the description may name the user: it must never be logged.
            email = grant["claims"].get("email") if grant else None
            return 400, {
                "error": "invalid_grant",
                "error_description": f"code already used (by {email})",
            }
        grant["used"] = True
        now = int(time.time())
        id_token = jwt.encode(
            {
                "iss": self.url,
                "aud": "messages",
                "sub": grant["claims"]["sub"],
                "nonce": grant["nonce"],
                "iat": now,
                "exp": now + 300,
            },
            _signing_key(),
            algorithm="RS256",
            headers={"kid": KEY_ID},
        )
        access_token = secrets.token_urlsafe(24)
        self._userinfo[access_token] = grant["claims"]
        self.issued_tokens += [id_token, access_token]
        return 200, {"id_token": id_token, "access_token": access_token, "token_type": "Bearer"}


KEY_ID = "test-key"


@functools.cache
def _signing_key():
    """The provider's RSA key, made once per test process (2048 bits take a moment)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks() -> dict:
    key = jwt.algorithms.RSAAlgorithm.to_jwk(_signing_key().public_key(), as_dict=True)
    return {"keys": [{**key, "kid": KEY_ID, "alg": "RS256", "use": "sig"}]}


class _ProviderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        provider: OIDCProvider = self.server.provider
        url = urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(url.query).items()}
        if url.path in provider.broken:
            self._answer(*provider.broken[url.path])
        elif url.path == "/authorize":
            if provider.user is None:
                self._answer(401, "text/plain", b"sign in first")
                return
            code = provider._issue_code(query)
            target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
            self._redirect(target)
        elif url.path == "/jwks":
            self._json(200, _jwks())
        elif url.path == "/userinfo":
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            claims = provider._userinfo.get(token)
            self._json(200, claims) if claims is not None else self._json(401, {})
        elif url.path == "/end_session":
            provider.ended_sessions.append(query)
            provider.user = None
            if "post_logout_redirect_uri" in query:
                self._redirect(query["post_logout_redirect_uri"])
            else:
                self._answer(200, "text/plain", b"signed out")
        else:
            self._answer(404, "text/plain", b"")

    def do_POST(self) -> None:
        provider: OIDCProvider = self.server.provider
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if self.path in provider.broken:
            self._answer(*provider.broken[self.path])
        elif self.path == "/token":
            form = {name: values[0] for name, values in parse_qs(body).items()}
            self._json(*provider._token(form))
        else:
            self._answer(404, "text/plain", b"")

    def _json(self, status: int, body) -> None:
        self._answer(status, "application/json", json.dumps(body).encode())

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass
