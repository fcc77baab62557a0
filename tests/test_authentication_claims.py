"""What a login may carry, against a real OpenID provider over HTTP (tests/support/
oidc_provider.py: authorize, single-use codes, RS256 id tokens found at its JWKS endpoint,
userinfo, end_session).

Claims are input: one policy (`clean_login_claims`) keeps a valid e-mail under the one
normaliser, a bounded `sub`, trimmed and bounded names, and only the forwarded claims of the
shape the backend expects. Any failure of the provider's token, JWKS or userinfo call, a
replayed code included, is a refused login (the failure redirect), logged once, never a 500.
Logging out ends the provider's session too (RP-initiated logout).
"""

import logging
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from django.test import Client
from django.urls import resolve, reverse
from mozilla_django_oidc.views import OIDCLogoutView

from core.models import EntitlementSyncState, User
from tests.support.oidc_provider import OIDCProvider

SIRET = "12345678900017"
CLAIMS = {"sub": "sub-alice", "email": "alice@alpha.example.org", "given_name": "Alice"}


@pytest.fixture
def oidc(settings, deploycenter_backend):
    """The provider, configured; the DeployCenter backend forwards `siret`. In a `db` test the
    login's sync is sent after a commit that never comes: no broker is used."""
    with OIDCProvider() as provider:
        provider.configure(settings)
        yield provider


def logged_in(browser: Client) -> bool:
    return "_auth_user_id" in browser.session


def refused(response) -> bool:
    """mozilla-django-oidc's failure redirect (LOGIN_REDIRECT_URL_FAILURE, `/` by default)."""
    return response.status_code == 302 and response["Location"] == "/"


def warnings_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"email": "alice\x00@alpha.example.org"}, "email claim"),
        ({"email": "alice@alpha.example.org\r\nBcc: x@y.org"}, "email claim"),
        ({"email": "alice@alpha.example.org\n"}, "email claim"),
        ({"email": "not-an-email"}, "email claim"),
        ({"email": "alice@xn--zz.example.org"}, "email claim"),
        ({"email": ["alice@alpha.example.org"]}, "email claim"),
        ({"email": None}, "email claim"),
        ({"sub": "s" * 256}, "sub claim"),
        ({"sub": "sub\x00alice"}, "sub claim"),
        # PyJWT refuses it in the id token already.
        ({"sub": 42}, "id token check failed: InvalidSubjectError"),
        ({"given_name": "Ali\x00ce"}, "given_name claim"),
        ({"given_name": "Alice\r\nX-Injected: yes"}, "given_name claim"),
    ],
    ids=repr,
)
def test_a_login_with_an_unusable_claim_is_refused_cleanly(db, oidc, caplog, claims, reason):
    with caplog.at_level(logging.INFO):
        response = oidc.log_in({**CLAIMS, **claims})

    assert refused(response)
    assert not logged_in(response.client)
    assert not User.objects.exists()
    [warning] = warnings_logged(caplog)
    assert warning.startswith("OIDC login refused:") and reason in warning


@pytest.mark.parametrize(
    ("email", "stored"),
    [
        # IDNA's dot equivalents are the same domain, and one trailing dot its FQDN spelling.
        ("alice@alpha\uff0eexample\uff0eorg", "alice@alpha.example.org"),
        ("alice@alpha\u3002example\uff61org", "alice@alpha.example.org"),
        ("alice@Alpha.Example.ORG.", "alice@alpha.example.org"),
        ("  alice@alpha.example.org ", "alice@alpha.example.org"),
    ],
    ids=repr,
)
def test_the_email_is_stored_as_the_one_normaliser_writes_it(db, oidc, email, stored):
    response = oidc.log_in({**CLAIMS, "email": email})

    assert logged_in(response.client)
    assert User.objects.get().email == stored


@pytest.mark.parametrize(
    "email",
    ["ADMIN@alpha.example.org.", "admin@alpha\uff0eexample\uff0eorg", "Admin@ALPHA.example.org"],
)
def test_another_spelling_of_a_taken_email_is_no_second_account(db, oidc, email):
    holder = User.objects.create_user(email="admin@alpha.example.org", sub="sub-admin")

    response = oidc.log_in({"sub": "sub-intruder", "email": email})

    assert refused(response)
    assert list(User.objects.all()) == [holder]


def test_a_known_subject_moving_to_another_spelling_of_a_taken_email_is_refused(db, oidc):
    User.objects.create_user(email="admin@alpha.example.org", sub="sub-admin")
    mover = User.objects.create_user(email="alice@alpha.example.org", sub="sub-alice")

    response = oidc.log_in({"sub": "sub-alice", "email": "ADMIN@alpha\uff0eexample.org."})

    assert refused(response)
    mover.refresh_from_db()
    assert mover.email == "alice@alpha.example.org"


def test_names_are_trimmed_and_bounded(db, oidc):
    response = oidc.log_in({**CLAIMS, "given_name": "  Alice  ", "usual_name": "B" * 400})

    assert logged_in(response.client)
    full_name = User.objects.get().full_name
    assert full_name.startswith("Alice B") and len(full_name) == 255


@pytest.mark.parametrize(
    "siret",
    [
        [SIRET],
        {"value": SIRET},
        int(SIRET),
        True,
        "1234",
        "1234567890001x",
        " 1234567890001 7",
        f"{SIRET}\x00",
        f"{SIRET}\n",
        "",
    ],
    ids=repr,
)
def test_a_siret_not_of_fourteen_digits_is_not_stored(db, oidc, siret):
    response = oidc.log_in({**CLAIMS, "siret": siret})

    # The login itself goes through: the sync will say the claim is missing.
    assert logged_in(response.client)
    assert EntitlementSyncState.objects.get().forwarded_claims == {}


def test_a_siret_of_fourteen_digits_is_stored_trimmed(db, oidc):
    oidc.log_in({**CLAIMS, "siret": f" {SIRET} ", "phone_number": "+33 1 23 45 67 89"})

    assert EntitlementSyncState.objects.get().forwarded_claims == {"siret": SIRET}


def test_a_userinfo_about_another_subject_is_refused(db, oidc, caplog, settings):
    # The token is about sub-alice; the userinfo answer speaks of someone else.
    oidc.user = CLAIMS
    browser = Client()
    callback = oidc.authorize(browser)
    oidc._userinfo.clear()
    oidc.broken["/userinfo"] = (200, "application/json", b'{"sub": "sub-bob", "email": "b@b.org"}')

    with caplog.at_level(logging.INFO):
        response = browser.get(callback)

    assert refused(response)
    assert warnings_logged(caplog) == [
        "OIDC login refused: the userinfo's sub is not the id token's"
    ]


def test_a_replayed_code_is_a_refused_login_logged_once(db, oidc, caplog):
    first = oidc.log_in(CLAIMS)
    assert logged_in(first.client)
    used_code = parse_qs(urlsplit(first.wsgi_request.get_full_path()).query)["code"][0]
    # Another browser, a fresh state of its own, the code already used.
    attacker = Client()
    callback = urlsplit(oidc.authorize(attacker))
    fresh_state = parse_qs(callback.query)["state"][0]

    with caplog.at_level(logging.INFO):
        response = attacker.get(callback.path, {"code": used_code, "state": fresh_state})

    assert refused(response)
    assert not logged_in(attacker)
    assert warnings_logged(caplog) == [
        "OIDC login refused: the token endpoint answered 400 invalid_grant"
    ]
    # The provider's error_description names the user: it never reaches a log line.
    assert "alice" not in caplog.text


BROKEN_ANSWERS = {
    "token 500": ("/token", (500, "text/html", b"<h1>down</h1>"), "token endpoint answered 500"),
    "token not JSON": ("/token", (200, "text/html", b"<h1>hi</h1>"), "token endpoint failed"),
    "token without id token": (
        "/token",
        (200, "application/json", b'{"access_token": "x"}'),
        "holds no id token",
    ),
    "token a list": ("/token", (200, "application/json", b"[]"), "holds no id token"),
    "JWKS 503": ("/jwks", (503, "text/plain", b""), "id token check answered 503"),
    "JWKS not JSON": ("/jwks", (200, "text/plain", b"keys"), "id token check failed"),
    "JWKS without keys": ("/jwks", (200, "application/json", b"{}"), "id token check failed"),
    "JWKS another key": (
        "/jwks",
        (200, "application/json", b'{"keys": [{"kid": "other", "kty": "RSA"}]}'),
        "id token check failed",
    ),
    "userinfo 500": ("/userinfo", (500, "text/plain", b""), "userinfo endpoint answered 500"),
    "userinfo not JSON": ("/userinfo", (200, "text/plain", b"{"), "userinfo endpoint failed"),
    "userinfo a list": ("/userinfo", (200, "application/json", b"[1]"), "not a JSON object"),
    "userinfo a bad JWT": (
        "/userinfo",
        (200, "application/jwt", b"not.a.jwt"),
        "id token check failed",
    ),
}


@pytest.mark.parametrize("case", BROKEN_ANSWERS.values(), ids=BROKEN_ANSWERS.keys())
def test_every_provider_failure_is_a_refused_login_logged_once(db, oidc, caplog, case):
    path, answer, reason = case
    oidc.broken[path] = answer

    with caplog.at_level(logging.INFO):
        response = oidc.log_in(CLAIMS)

    assert refused(response)
    assert not User.objects.exists()
    [warning] = warnings_logged(caplog)
    assert warning.startswith("OIDC login refused:") and reason in warning


def test_an_unreachable_provider_is_a_refused_login(db, oidc, settings, caplog):
    oidc.user = CLAIMS
    browser = Client()
    callback = oidc.authorize(browser)
    settings.OIDC_OP_TOKEN_ENDPOINT = "http://127.0.0.1:9/token"  # nothing listens there

    with caplog.at_level(logging.INFO):
        response = browser.get(callback)

    assert refused(response)
    assert warnings_logged(caplog) == [
        "OIDC login refused: the token endpoint failed: ConnectionError"
    ]


def test_logout_ends_the_session_at_the_provider(db, oidc):
    browser = oidc.log_in(CLAIMS).client
    id_token = browser.session["oidc_id_token"]
    assert id_token in oidc.issued_tokens
    # The admin's logout button posts to the view that logs out at the provider too.
    assert resolve(reverse("admin:logout")).func.view_class is OIDCLogoutView

    response = browser.post(reverse("admin:logout"))

    assert not logged_in(browser)
    end_session = urlsplit(response["Location"])
    assert f"{end_session.scheme}://{end_session.netloc}{end_session.path}" == (
        f"{oidc.url}/end_session"
    )
    assert parse_qs(end_session.query) == {
        "id_token_hint": [id_token],
        "post_logout_redirect_uri": ["http://testserver/"],
        "client_id": ["messages"],
    }
    # The browser follows: the provider ends its session and sends it back.
    back = requests.get(response["Location"], allow_redirects=False, timeout=10)
    assert back.headers["Location"] == "http://testserver/"
    assert oidc.ended_sessions[0]["id_token_hint"] == id_token
    # The next login does not go straight through a live provider session.
    start = Client().get("/oidc/authenticate/")
    assert requests.get(start["Location"], allow_redirects=False, timeout=10).status_code == 401


def test_logout_without_a_provider_session_stays_local(db, oidc, admin_client):
    response = admin_client.post(reverse("admin:logout"))

    assert response.status_code == 302 and response["Location"] == "/"
    assert not logged_in(admin_client)
    assert oidc.ended_sessions == []


def test_logout_without_an_end_session_endpoint_stays_local(db, oidc, settings):
    settings.OIDC_OP_LOGOUT_ENDPOINT = ""
    browser = oidc.log_in(CLAIMS).client

    response = browser.post(reverse("admin:logout"))

    assert response.status_code == 302 and response["Location"] == "/"
    assert not logged_in(browser)
    assert oidc.ended_sessions == []


def test_logout_is_a_post_protected_against_csrf(db, oidc):
    browser = Client(enforce_csrf_checks=True)
    oidc.log_in(CLAIMS, browser)

    assert browser.get(reverse("admin:logout")).status_code == 405
    assert browser.post(reverse("admin:logout")).status_code == 403
    assert logged_in(browser)
