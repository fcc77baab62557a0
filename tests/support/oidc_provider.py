"""A fake OIDC provider for mozilla-django-oidc's real code flow."""

import time
from urllib.parse import parse_qs, urlsplit

import jwt
import responses
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
