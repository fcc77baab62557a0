"""Rights true to DeployCenter now, end to end: a real worker subprocess, the stub over HTTP with
its realistic latency, the production cache windows. A person's resync right after a login
lands a change made upstream within seconds; a login storm still asks DeployCenter about once
per user."""

import random
import threading
import time

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import F
from django.urls import reverse

from core.entitlements import request_sync
from core.entitlements.receipts import RequestOutcome
from core.models import EntitlementSyncState, Trigger
from tests.faults.conftest import ALPHA, BETA, fault_seed, synced_domains, upstream_calls_by_email
from tests.support import wait_until

# Saturates the CPU or measures a rate or a delay: `make test` runs it apart, alone (conftest.py).
pytestmark = pytest.mark.heavy

# Production's windows: a five-minute fresh answer would hide the change if anyone used it.
WINDOWS = {"ENTITLEMENTS_CACHE_TIMEOUT_SECONDS": 300, "ENTITLEMENTS_STALE_FALLBACK_SECONDS": 3600}
# How soon a person's resync must land, worker and upstream latency included.
LANDS_WITHIN_SECONDS = 5
USERS_CHANGELIST = reverse("admin:core_user_changelist")


def _login_synced(user) -> None:
    request_sync(user=user, trigger=Trigger.LOGIN)
    wait_until(lambda: synced_domains(user) == {ALPHA, BETA}, message="the login's sync")


def _resync(means: str, user, admin_client) -> None:
    if means == "admin":
        response = admin_client.post(
            USERS_CHANGELIST,
            {"action": "resync_entitlements", "_selected_action": [str(user.pk)]},
        )
        assert response.status_code == 302
    else:
        # Times out (exit 3, CommandError) if no sync starts after the request.
        call_command("sync_entitlements", "--user", user.email, "--wait", "--timeout", "15")


@pytest.mark.parametrize("means", ["admin", "command"])
def test_a_change_upstream_lands_on_a_resync_one_second_after_login(
    start_worker, make_admins, upstream, admin_client, means, report_figure
):
    start_worker(**WINDOWS)
    [user] = make_admins(1)
    _login_synced(user)

    upstream.set_admin_domains(user.email, [ALPHA])
    time.sleep(1)
    started = time.monotonic()
    _resync(means, user, admin_client)
    wait_until(
        lambda: synced_domains(user) == {ALPHA},
        timeout=LANDS_WITHIN_SECONDS,
        message="the change to land",
    )

    landed = time.monotonic() - started
    report_figure(f"resync ({means}) 1 s after login: change upstream landed in {landed:.2f} s")
    assert upstream_calls_by_email(upstream)[user.email] == 2


def test_wait_for_a_users_sync_right_after_their_login_does_not_time_out(
    start_worker, make_admins, upstream
):
    start_worker(**WINDOWS)
    [user] = make_admins(1)
    request_sync(user=user, trigger=Trigger.LOGIN)
    # Right after the login: its sync has started, or already ended.
    wait_until(
        lambda: EntitlementSyncState.objects.filter(user=user, started_at__isnull=False).exists(),
        message="the login's sync to start",
    )

    call_command("sync_entitlements", "--user", user.email, "--wait", "--timeout", "15")

    assert synced_domains(user) == {ALPHA, BETA}
    state = EntitlementSyncState.objects.get(user=user)
    assert state.started_at >= state.requested_at


def test_a_login_storm_asks_deploycenter_about_once_per_user(
    start_worker, make_admins, upstream, report_figure
):
    users_count, logins, web_threads, concurrency = 100, 1000, 8, 1
    start_worker(concurrency=concurrency, **WINDOWS)
    users = make_admins(users_count)
    rng = random.Random(fault_seed())
    storm = [rng.choice(users) for _ in range(logins - users_count)] + users
    rng.shuffle(storm)
    outcomes = []

    def web_process(logins_of):
        try:
            outcomes.extend(
                request_sync(user=user, trigger=Trigger.LOGIN).outcome for user in logins_of
            )
        finally:
            connection.close()

    started = time.monotonic()
    threads = [
        threading.Thread(target=web_process, args=(storm[index::web_threads],))
        for index in range(web_threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    storm_seconds, calls_during_storm = time.monotonic() - started, upstream.calls
    # Every login is served by a sync that started after it: none waits for the sweep.
    wait_until(
        lambda: (
            not EntitlementSyncState.objects.filter(user__in=users)
            .exclude(started_at__gte=F("requested_at"), finished_at__gte=F("started_at"))
            .exists()
        ),
        timeout=90,
        message="every login served",
    )

    calls = upstream.calls
    queued = sum(outcome == RequestOutcome.QUEUED for outcome in outcomes)
    report_figure(
        f"login storm: {logins} logins of {users_count} users in {storm_seconds:.1f} s "
        f"({web_threads} web threads, 1 worker process) -> {queued} tasks, {calls} upstream "
        f"calls ({calls / users_count:.2f} per user; {calls_during_storm} during the storm)"
    )
    assert len(outcomes) == logins
    assert all(synced_domains(user) == {ALPHA, BETA} for user in users)
    # A task whose request an answer asked since then serves asks nothing more.
    assert calls <= queued
    # At most one task waits per user at any moment: once the storm is over, each user gets
    # at most one more sync (plus those running as it ended).
    assert calls <= calls_during_storm + users_count + concurrency
    assert calls < logins / 3
