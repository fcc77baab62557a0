"""OIDC identity edge cases through mozilla-django-oidc's real code flow: a login whose e-mail
belongs to another local user is refused like a failed authentication, never a 500, and its log
names the user by id, never by e-mail; OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION adopts a user
without a `sub`, never one holding another."""

import html
import logging

import pytest

from core.authentication import EMAIL_TAKEN_MESSAGE
from core.models import EntitlementSyncState, User
from tests.support.oidc_provider import FakeProvider

EMAIL = "alice@alpha.example.org"


@pytest.fixture
def provider(settings):
    # In a `db` test the login's task is sent after a commit that never comes: no broker use.
    return FakeProvider(settings)


def logged_in(browser) -> bool:
    return "_auth_user_id" in browser.session


def login(provider, caplog, *, sub: str, email: str):
    """Run the flow; return the browser, after checking the answer is the failure/success
    redirect (FakeProvider asserts a 302) and that no log line carries the e-mail."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        browser = provider.login({"sub": sub, "email": email, "given_name": "Alice"})
    local_part = email.partition("@")[0]
    for record in caplog.records:
        text = record.getMessage() + str(record.exc_text or "")
        assert local_part not in text.lower(), f"the e-mail leaked: {text!r}"
    return browser


def test_an_email_held_by_another_subject_is_refused_cleanly(db, provider, caplog):
    holder = User.objects.create_user(email=EMAIL, sub="sub-original")

    browser = login(provider, caplog, sub="sub-newcomer", email=EMAIL)

    assert not logged_in(browser)
    assert not User.objects.filter(sub="sub-newcomer").exists()
    holder.refresh_from_db()
    assert (holder.sub, holder.email) == ("sub-original", EMAIL)
    assert any(str(holder.pk) in record.getMessage() for record in caplog.records)


def test_an_email_held_by_a_user_without_subject_is_refused_by_default(db, provider, caplog):
    operator = User.objects.create_user(email=EMAIL)

    browser = login(provider, caplog, sub="sub-alice", email=EMAIL)

    assert not logged_in(browser)
    operator.refresh_from_db()
    assert operator.sub is None


def test_the_fallback_adopts_a_user_without_subject_and_requests_a_sync(
    db, settings, provider, caplog
):
    settings.OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION = True
    operator = User.objects.create_user(email=EMAIL, full_name="Operator")

    browser = login(provider, caplog, sub="sub-alice", email="alice@ALPHA.Example.org")

    assert logged_in(browser)
    assert browser.session["_auth_user_id"] == str(operator.pk)
    operator.refresh_from_db()
    assert (operator.sub, operator.email) == ("sub-alice", EMAIL)
    state = EntitlementSyncState.objects.get(user=operator)
    assert (state.status, state.last_trigger) == ("pending", "login")
    assert state.requested_at is not None


def test_the_fallback_never_adopts_a_user_holding_another_subject(db, settings, provider, caplog):
    settings.OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION = True
    holder = User.objects.create_user(email=EMAIL, sub="sub-original")

    browser = login(provider, caplog, sub="sub-newcomer", email=EMAIL)

    assert not logged_in(browser)
    holder.refresh_from_db()
    assert holder.sub == "sub-original"


def test_case_in_the_email_domain_does_not_make_another_user(db, provider, caplog):
    User.objects.create_user(email=EMAIL, sub="sub-original")

    browser = login(provider, caplog, sub="sub-newcomer", email="alice@Alpha.EXAMPLE.org")

    assert not logged_in(browser)
    assert User.objects.filter(email__iexact=EMAIL).count() == 1


def test_a_known_subject_moving_to_a_taken_email_is_refused(db, provider, caplog):
    User.objects.create_user(email=EMAIL, sub="sub-original")
    bob = User.objects.create_user(email="bob@alpha.example.org", sub="sub-bob")

    browser = login(provider, caplog, sub="sub-bob", email="alice@alpha.EXAMPLE.org")

    assert not logged_in(browser)
    bob.refresh_from_db()
    assert bob.email == "bob@alpha.example.org"
    # A free new e-mail is followed as before.
    assert logged_in(login(provider, caplog, sub="sub-bob", email="robert@alpha.example.org"))
    bob.refresh_from_db()
    assert bob.email == "robert@alpha.example.org"


def test_a_refused_login_lands_on_the_login_page_saying_why_and_whom_to_ask(db, provider, caplog):
    holder = User.objects.create_user(email=EMAIL, sub="sub-original", full_name="Alice Holder")

    browser = login(provider, caplog, sub="sub-newcomer", email=EMAIL)
    # Where mozilla-django-oidc sends a failed login: "/" (the admin), then its login page.
    page = browser.get("/", follow=True)

    assert not logged_in(browser)
    assert page.redirect_chain[-1][0].startswith("/admin/login/")
    text = html.unescape(page.content.decode())
    assert EMAIL_TAKEN_MESSAGE in text
    assert "ask an administrator of this service" in text
    for detail in (EMAIL, "Alice Holder", str(holder.pk)):
        assert detail not in text, f"the page names the other account: {detail}"
    # Shown once: the next visit of the login page is clean.
    assert EMAIL_TAKEN_MESSAGE not in html.unescape(browser.get("/admin/login/").content.decode())
