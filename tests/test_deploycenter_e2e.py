"""End to end against the local DeployCenter over HTTP: OIDC login, worker, engine, stub.

A login grants what DeployCenter says; a transient 503 is retried until it answers; a 401 is
not retried; the periodic run revokes a right removed upstream from a user who never logs in
again."""

import time

import pytest

from core.entitlements.circuit_breaker import CircuitBreaker
from core.entitlements.sync_requests import request_sync
from core.models import AccessAuditEntry, EntitlementSyncState, MailDomain, MailDomainAccess, User
from tests.deploycenter_stub import ALPHA_SIRET
from tests.support import wait_until
from tests.support.oidc_provider import FakeProvider
from worker.tasks import SyncNotApplied

ALPHA, BETA = "alpha.example.org", "beta.example.org"
ADMIN = "admin@alpha.example.org"


def admin_domains(user) -> set[str]:
    return set(
        MailDomainAccess.objects.filter(user=user).values_list("maildomain__name", flat=True)
    )


@pytest.fixture
def world(
    transactional_db,
    celery_worker,
    celery_app,
    depends_on_current_app,
    broker_queues,
    deploycenter_backend,
    settings,
):
    """A worker, the stub as the configured upstream, the alpha and beta domains."""
    # Each sync asks the stub: the fresh cache would hide the changes these tests make.
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 0
    settings.ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS = 0.2
    settings.ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS = 0.4
    for name in (ALPHA, BETA):
        MailDomain.objects.create(name=name)
    return deploycenter_backend


@pytest.fixture
def admin(world):
    """The stub's admin, logged in once (forwarded siret stored)."""
    user = User.objects.create_user(email=ADMIN, sub="sub-admin")
    EntitlementSyncState.objects.create(user=user, forwarded_claims={"siret": ALPHA_SIRET})
    return user


def test_oidc_login_lands_deploycenter_rights(world, settings):
    provider = FakeProvider(settings, passthru=(world.url,))

    browser = provider.login({"sub": "sub-admin", "email": ADMIN, "siret": ALPHA_SIRET})

    assert "_auth_user_id" in browser.session
    user = User.objects.get(sub="sub-admin")
    wait_until(lambda: admin_domains(user) == {ALPHA, BETA}, message="the login's sync")
    [request] = world.requests
    assert request["query"]["siret"] == [ALPHA_SIRET]


def test_503_twice_then_200_succeeds_after_retries(world, admin, celery_app):
    world.fail_with(503)

    task_id = request_sync(user=admin, trigger="login").task_id
    wait_until(lambda: world.calls >= 2, message="two failed attempts")
    world.recover()
    result = celery_app.AsyncResult(task_id).get(timeout=20)

    assert (result["status"], result["added"]) == ("ok", [ALPHA, BETA])
    assert world.calls >= 3
    assert admin_domains(admin) == {ALPHA, BETA}


def test_a_retry_refused_by_an_open_circuit_waits_for_it_to_reopen(
    world, admin, celery_app, settings
):
    """DeployCenter is back, but the circuit its outage opened refuses calls for its cool-down:
    the login's sync waits for the circuit to reopen and asks then. Before, its retries were
    spent inside the cool-down, each refused without asking, and it ended unavailable."""
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = 1
    settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = 2.0
    settings.ENTITLEMENTS_SYNC_MAX_RETRIES = 2
    # Backoff ceilings of 0.2 and 0.4 s: both retries would fall inside the cool-down.
    settings.ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS = 3.0
    CircuitBreaker().record_failure()  # the outage's last failure opens the circuit
    started = time.monotonic()

    task_id = request_sync(user=admin, trigger="login").task_id
    result = celery_app.AsyncResult(task_id).get(timeout=20)

    assert (result["status"], result["added"]) == ("ok", [ALPHA, BETA])
    assert world.calls == 1, "refused while open, asked once it reopened"
    assert time.monotonic() - started >= 1.5
    assert admin_domains(admin) == {ALPHA, BETA}


def test_401_is_not_retried_and_changes_nothing(world, admin, celery_app):
    MailDomainAccess.objects.create(
        user=admin,
        maildomain=MailDomain.objects.get(name=ALPHA),
        source=MailDomainAccess.Source.ENTITLEMENTS,
    )
    world.fail_with(401, b'{"detail": "Informations invalides."}', "application/json")

    task_id = request_sync(user=admin, trigger="login").task_id
    with pytest.raises(SyncNotApplied, match=r"not applied: error \(http_401\)"):
        celery_app.AsyncResult(task_id).get(timeout=20)
    time.sleep(1)

    assert world.calls == 1
    assert admin_domains(admin) == {ALPHA}


def test_periodic_run_revokes_a_right_removed_upstream(world, admin, celery_app):
    task_id = request_sync(user=admin, trigger="login").task_id
    celery_app.AsyncResult(task_id).get(timeout=20)
    assert admin_domains(admin) == {ALPHA, BETA}

    # Upstream drops beta; the admin never logs in again.
    world.set_admin_domains(ADMIN, [ALPHA])
    totals = celery_app.send_task("entitlements.sync_all_admins", args=["periodic"]).get(timeout=20)
    wait_until(lambda: admin_domains(admin) == {ALPHA}, message="the periodic revocation")

    assert totals["users_enqueued"] == 1
    revocation = AccessAuditEntry.objects.get(user=admin, action="revoked")
    assert (revocation.maildomain_name, revocation.trigger) == (BETA, "periodic")
