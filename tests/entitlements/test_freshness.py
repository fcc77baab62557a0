"""The freshness rule on the stub over HTTP and Redis: a person's request asks DeployCenter now,
the periodic run may take the fresh window, an upstream that is down is covered by the stale
window either way."""

import threading
import time

import pytest
from django.core.cache import cache
from django.utils import timezone

from core.entitlements import plan_sync, sync_run_batch, sync_user_entitlements
from core.entitlements.cache import cache_key
from core.entitlements.sync import fetch_user_answer
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User
from tests.factories import SyncRunFactory

ADMIN = "admin@alpha.example.org"
ALPHA, BETA = "alpha.example.org", "beta.example.org"
SIRET = "12345678900017"
PERSONS = ["login", "admin", "command", "sweep"]


@pytest.fixture(autouse=True)
def _real_windows(settings, db):
    """The production windows: five minutes fresh, six hours stale."""
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 300
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 6 * 3600
    for name in (ALPHA, BETA):
        MailDomain.objects.create(name=name)


@pytest.fixture
def admin(deploycenter_backend):
    user = User.objects.create_user(email=ADMIN)
    EntitlementSyncState.objects.create(user=user, forwarded_claims={"siret": SIRET})
    return user


def _rights(user) -> set[str]:
    return set(
        MailDomainAccess.objects.filter(user=user).values_list("maildomain__name", flat=True)
    )


def _request(user) -> None:
    """What request_sync records: the moment of the person's request."""
    EntitlementSyncState.objects.filter(user=user).update(requested_at=timezone.now())


@pytest.mark.parametrize("trigger", PERSONS)
def test_a_persons_request_sees_a_change_made_inside_the_fresh_window(
    deploycenter_backend, admin, trigger
):
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    deploycenter_backend.set_admin_domains(ADMIN, [ALPHA])
    _request(admin)

    result = sync_user_entitlements(user_id=admin.pk, trigger=trigger)

    assert (result.cache, result.removed) == ("miss", [BETA])
    assert _rights(admin) == {ALPHA}
    assert deploycenter_backend.calls == 2


def test_the_periodic_run_may_use_the_fresh_window(deploycenter_backend, admin):
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    deploycenter_backend.set_admin_domains(ADMIN, [ALPHA])

    result = sync_user_entitlements(user_id=admin.pk, trigger="periodic")

    assert (result.cache, result.changed) == ("hit", False)
    assert deploycenter_backend.calls == 1


def test_an_answer_asked_since_the_request_serves_it(deploycenter_backend, admin):
    _request(admin)
    sync_user_entitlements(user_id=admin.pk, trigger="login")

    # A second task for the same request (a retry, or one collapsed late) asks nothing more.
    again = sync_user_entitlements(user_id=admin.pk, trigger="login")

    assert again.cache == "hit"
    assert deploycenter_backend.calls == 1


def test_an_answer_in_flight_when_the_request_came_does_not_serve_it(deploycenter_backend, admin):
    deploycenter_backend.latency = 0.5
    # The periodic run's fetch (no database in that thread: the test's transaction is its own).
    loaded = User.objects.select_related("sync_state").get(pk=admin.pk)
    periodic = threading.Thread(
        target=fetch_user_answer, kwargs={"user": loaded, "trigger": "periodic"}
    )
    periodic.start()
    time.sleep(0.2)
    # Asked before this request, answered after it: the answer dates from when it was asked.
    _request(admin)
    periodic.join()
    deploycenter_backend.latency = 0

    result = sync_user_entitlements(user_id=admin.pk, trigger="login")

    assert result.cache == "miss"
    assert deploycenter_backend.calls == 2


@pytest.mark.parametrize("trigger", PERSONS)
def test_a_persons_request_falls_back_on_the_stale_answer_while_upstream_is_down(
    deploycenter_backend, admin, trigger
):
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    deploycenter_backend.fail_with(503)
    _request(admin)

    result = sync_user_entitlements(user_id=admin.pk, trigger=trigger)

    assert (result.cache, result.status) == ("stale", "ok")
    assert _rights(admin) == {ALPHA, BETA}
    assert deploycenter_backend.calls == 2


def test_past_the_stale_window_a_persons_request_is_unavailable(
    deploycenter_backend, admin, settings
):
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    entry = cache.get(cache_key(admin.pk))
    entry["fetched_at"] -= settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS + 1
    cache.set(cache_key(admin.pk), entry)
    deploycenter_backend.fail_with(503)

    result = sync_user_entitlements(user_id=admin.pk, trigger="admin")

    assert result.status == "unavailable"


def test_a_dry_run_asks_now(deploycenter_backend, admin):
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    deploycenter_backend.set_admin_domains(ADMIN, [ALPHA])

    result = plan_sync(user_id=admin.pk)

    assert (result.cache, result.removed) == ("miss", [BETA])
    assert _rights(admin) == {ALPHA, BETA}


@pytest.mark.parametrize(
    ("trigger", "calls", "rights"),
    [("admin", 2, {ALPHA}), ("command", 2, {ALPHA}), ("periodic", 1, {ALPHA, BETA})],
)
def test_a_run_a_person_started_asks_now_the_periodic_one_may_not(
    deploycenter_backend, admin, trigger, calls, rights
):
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    deploycenter_backend.set_admin_domains(ADMIN, [ALPHA])

    run = SyncRunFactory(status="running", trigger=trigger, revoke_budget=10)
    outcome = sync_run_batch(
        run_id=run.pk, user_ids=[str(admin.pk)], trigger=trigger, task_id=f"batch-{trigger}"
    )

    assert outcome.counts
    assert deploycenter_backend.calls == calls
    assert _rights(admin) == rights
