"""End to end through a real worker subprocess, full runs and the local DeployCenter over HTTP:
an organisation whose subscription ended keeps its admins' rights through the confirmation
window, then a run revokes them within its budget; once nothing sync-made is left, later full
runs leave them out until something can change (a login)."""

import time

from core.entitlements.sync_requests import request_resync
from core.models import EntitlementSyncState, SyncRun
from tests.deploycenter_stub import ALPHA_SIRET
from tests.faults.conftest import ALPHA, BETA, synced_domains, upstream_calls_by_email
from tests.support import wait_until
from tests.support.oidc_provider import FakeProvider

WINDOW_SECONDS = 3


def full_run() -> SyncRun:
    """Start a full run and wait for it to end."""
    task_id = request_resync(trigger="periodic").task_id
    return wait_until(
        lambda: SyncRun.objects.filter(task_id=task_id, status="done").first(),
        timeout=30,
        message="the full run",
    )


def test_an_ended_subscription_is_revoked_by_a_run_after_its_window(
    start_worker, make_admins, upstream, settings
):
    users = make_admins(2, upstream_domains=(ALPHA, BETA), held=(ALPHA, BETA))
    start_worker(concurrency=1, ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS=WINDOW_SECONDS)
    upstream.set_subscribed(ALPHA_SIRET, False)

    first = full_run()
    states = EntitlementSyncState.objects.filter(user__in=users)
    assert {(state.status, state.error_code) for state in states} == {
        ("access_ended", "not_activated")
    }
    assert all(state.entitled_domains == [] for state in states)
    assert all(synced_domains(user) == {ALPHA, BETA} for user in users)
    assert first.accesses_revoked == 0

    time.sleep(WINDOW_SECONDS + 0.5)
    second = full_run()

    assert all(synced_domains(user) == set() for user in users)
    assert (second.accesses_revoked, second.users_changed, second.budget_reached) == (
        4,
        2,
        False,
    )

    # Nothing sync-made left to revoke and nothing to grant: the next runs do not ask them.
    calls = upstream_calls_by_email(upstream)
    third = full_run()
    assert third.users_enqueued == 0
    assert upstream_calls_by_email(upstream) == calls

    # A login can change it: it asks, and the renewed subscription grants again.
    upstream.set_subscribed(ALPHA_SIRET, True)
    user = users[0]
    FakeProvider(settings).login({"sub": user.sub, "email": user.email, "siret": ALPHA_SIRET})
    wait_until(lambda: synced_domains(user) == {ALPHA, BETA}, message="the login's sync")
    assert upstream_calls_by_email(upstream)[user.email] == calls[user.email] + 1
