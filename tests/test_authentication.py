"""An OIDC login (mozilla-django-oidc's real code flow, the provider's token and userinfo
endpoints answered by `responses`) records the forwarded claims and requests a sync; it never
waits on the entitlements service and succeeds when the broker or the upstream is down."""

import time

import pytest
from celery.contrib.testing.worker import start_worker

from core.authentication import email_from_login
from core.entitlements.sync_requests import enqueue_outstanding_requests
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User
from tests.support.broker import QUEUES, producer_app

ALPHA = "alpha.example.org"
SIRET = "12345678900017"


CLAIMS = {
    "sub": "sub-alice",
    "email": "alice@alpha.example.org",
    "given_name": "Alice",
    "siret": SIRET,
    "phone_number": "+33 1 23 45 67 89",
}


def logged_in(browser) -> bool:
    return "_auth_user_id" in browser.session


def test_login_returns_before_the_sync_and_the_worker_grants_later(
    transactional_db,
    celery_worker,
    celery_app,
    depends_on_current_app,
    broker_queues,
    provider,
    scripted_upstream,
):
    MailDomain.objects.create(name=ALPHA)
    scripted_upstream(
        admins_by_email={CLAIMS["email"]: [ALPHA]}, claims=["siret"], latency_seconds=1.0
    )

    browser = provider.login(CLAIMS)

    assert logged_in(browser)
    assert browser.elapsed < 0.5, "the login must not wait on a 1 s upstream"
    user = User.objects.get(sub="sub-alice")
    assert not MailDomainAccess.objects.filter(user=user).exists()
    state = EntitlementSyncState.objects.get(user=user)
    # Exactly the claims the backend forwards: no phone number, no token.
    assert state.forwarded_claims == {"siret": SIRET}
    # The id token stays in the session for logout's end-session call; the access token never.
    assert "oidc_access_token" not in browser.session
    assert "the-access-token" not in str(dict(browser.session.items()))

    deadline = time.monotonic() + 20
    while not MailDomainAccess.objects.filter(user=user).exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    state.refresh_from_db()
    assert (state.status, state.last_trigger) == ("ok", "login")


def test_ten_logins_before_the_sync_starts_queue_one_task(
    transactional_db, broker_queues, provider, scripted_upstream
):
    # No worker yet: the first login's task has not started, so the nine others collapse into
    # it (a login once a sync has started gets a task of its own: test_request_collapse.py).
    scripted_upstream(admins_by_email={CLAIMS["email"]: []})

    for _ in range(10):
        assert logged_in(provider.login(CLAIMS))

    [message] = broker_queues.messages("interactive")
    user = User.objects.get(sub="sub-alice")
    assert message["args"] == [str(user.pk), "login"]


def test_login_succeeds_while_the_upstream_is_down(
    transactional_db, broker_queues, provider, scripted_upstream
):
    scripted_upstream(unavailable_emails=[CLAIMS["email"]], claims=["siret"])

    browser = provider.login(CLAIMS)

    assert logged_in(browser)
    assert broker_queues.length("interactive") == 1


@pytest.mark.broker
def test_login_while_the_broker_is_down_succeeds_and_syncs_once_it_is_back(
    transactional_db, private_redis, provider, scripted_upstream
):
    MailDomain.objects.create(name=ALPHA)
    scripted_upstream(admins_by_email={CLAIMS["email"]: [ALPHA]}, claims=["siret"])

    with producer_app(private_redis.url):
        browser = provider.login(CLAIMS)

    assert logged_in(browser), "a dead broker must not fail the login"
    assert browser.elapsed < 2
    user = User.objects.get(sub="sub-alice")
    assert EntitlementSyncState.objects.get(user=user).requested_at is not None

    private_redis.start()
    with producer_app(private_redis.url) as app:
        assert enqueue_outstanding_requests() == 1
        with start_worker(app, pool="solo", queues=QUEUES, perform_ping_check=False):
            deadline = time.monotonic() + 20
            while not MailDomainAccess.objects.filter(user=user).exists():
                assert time.monotonic() < deadline
                time.sleep(0.05)

    assert EntitlementSyncState.objects.get(user=user).status == "ok"


@pytest.mark.parametrize(
    ("stored", "claimed", "kept"),
    [
        # Only the case of the local part differs: the stored form, the one upstream knows.
        ("admin@alpha.example.org", "Admin@alpha.example.org", "admin@alpha.example.org"),
        ("Admin@alpha.example.org", "admin@ALPHA.example.org", "Admin@alpha.example.org"),
        # A real change is taken (and guarded by the identity rule).
        ("admin@alpha.example.org", "a.dmin@alpha.example.org", "a.dmin@alpha.example.org"),
        ("admin@alpha.example.org", "admin@beta.example.org", "admin@beta.example.org"),
        # The domain part is always stored lower-case.
        ("old@alpha.example.org", "New@ALPHA.example.org", "New@alpha.example.org"),
    ],
)
def test_a_login_keeps_the_stored_email_when_only_its_case_changed(stored, claimed, kept):
    assert email_from_login(stored=stored, claimed=claimed) == kept
