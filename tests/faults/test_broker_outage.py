"""Stop the broker (a private redis-server, also the cache) while users log in through the
real OIDC code flow: every login succeeds at once, and every requested sync runs once Redis is
back, including the tasks that were waiting in the broker when it went down (it keeps nothing
across a restart), because the sweep sends every recorded request that no sync served.
"""

import statistics
import time

import pytest
from celery import current_app

from core.models import EntitlementSyncState, User
from tests.deploycenter_stub import ALPHA_SIRET
from tests.faults.conftest import ALPHA, BETA, synced_domains, upstream_calls_by_email
from tests.support import wait_until
from tests.support.oidc_provider import FakeProvider

# The sweep leaves a request alone this long after a task was sent for it (the minimum).
SWEEP_GRACE_SECONDS = 10


def log_in(provider, email: str):
    """The OIDC code flow of one user; the browser, with `elapsed` for the callback."""
    return provider.login({"sub": f"sub-{email}", "email": email, "siret": ALPHA_SIRET})


def run_broker_outage(
    start_worker, upstream, private_broker, settings, report_figure, *, queued: int, down: int
) -> None:
    upstream.latency = 0.5
    provider = FakeProvider(settings)
    emails = [f"login-{index}@example.org" for index in range(queued + down)]
    for email in emails:
        upstream.set_admin_domains(email, [ALPHA, BETA])
    worker = start_worker(
        concurrency=1,
        redis_url=private_broker.url,
        ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS=SWEEP_GRACE_SECONDS,
    )

    # These logins queue their syncs; one runs (the upstream is slow), the rest wait in Redis.
    for email in emails[:queued]:
        assert "_auth_user_id" in log_in(provider, email).session
    wait_until(lambda: upstream.calls >= 1, message="the first sync to reach the upstream")
    private_broker.stop()
    upstream.latency = 0.0

    login_seconds = []
    for email in emails[queued:]:
        browser = log_in(provider, email)
        assert "_auth_user_id" in browser.session, "a dead broker must not fail a login"
        login_seconds.append(browser.elapsed)
    # One quick reconnection attempt to a refused port: a login never hangs on the broker.
    assert max(login_seconds) < 2
    users = list(User.objects.filter(email__in=emails))
    assert len(users) == len(emails)
    down_users = [user for user in users if user.email in emails[queued:]]
    assert not EntitlementSyncState.objects.filter(
        user__in=down_users, enqueued_at__isnull=False
    ).exists(), "a failed send leaves the request to the sweep"

    unserved = EntitlementSyncState.objects.filter(user__in=users).exclude(status="ok").count()
    private_broker.start()
    back_at = time.monotonic()
    # What beat does every minute, every 2 s here: the sweep, run by the worker.
    last_sweep = 0.0

    down_synced_in = None

    def everybody_synced() -> bool:
        nonlocal last_sweep, down_synced_in
        if time.monotonic() - last_sweep > 2:
            current_app.send_task("entitlements.sweep_pending_syncs")
            last_sweep = time.monotonic()
        synced = {user.pk for user in users if synced_domains(user) == {ALPHA, BETA}}
        if down_synced_in is None and {user.pk for user in down_users} <= synced:
            down_synced_in = time.monotonic() - back_at
        return len(synced) == len(users)

    wait_until(everybody_synced, timeout=90, every=0.25, message="every login's sync")
    recovered_in = time.monotonic() - back_at

    states = EntitlementSyncState.objects.filter(user__in=users)
    assert {state.status for state in states} == {"ok"}
    calls = upstream_calls_by_email(upstream)
    # Requested while the broker was down: sent once by the sweep, synced once.
    assert {calls[user.email] for user in down_users} == {1}
    assert worker.alive(), "the worker rides out the broker outage"
    report_figure(
        f"faults/broker down: {len(users)}/{len(users)} logins succeeded "
        f"({down} while Redis was down: max {max(login_seconds) * 1000:.0f} ms, median "
        f"{statistics.median(login_seconds) * 1000:.0f} ms); after Redis came back, those "
        f"{down} had their rights in {down_synced_in:.1f} s, the {unserved - down} whose "
        f"queued syncs Redis lost in {recovered_in:.1f} s (sweep every 2 s, grace "
        f"{SWEEP_GRACE_SECONDS} s): {len(users)}/{len(users)} synced, nothing lost"
    )


@pytest.mark.long
def test_users_log_in_while_the_broker_is_down(
    start_worker, domains, upstream, private_broker, settings, report_figure
):
    run_broker_outage(
        start_worker, upstream, private_broker, settings, report_figure, queued=4, down=20
    )
