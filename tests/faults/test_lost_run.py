"""A full run whose batches the broker lost (Redis restarted without persistence, as in the
issue) is closed as failed/incomplete within minutes, by the sweep beat sends every minute;
the next run goes ahead, and the admin says why the lost one ended. Real worker subprocess,
private redis-server, the DeployCenter stub over HTTP."""

import time

import pytest
from django.test import Client
from django.urls import reverse

from core.entitlements import request_resync
from core.models import SyncRun, Trigger, User
from tests.faults.conftest import until_sweeping
from tests.support import wait_until

STALL_SECONDS = 30
SETTINGS = {
    "ENTITLEMENTS_SYNC_BATCH_SIZE": 5,
    "ENTITLEMENTS_RUN_STALL_SECONDS": STALL_SECONDS,
    # The stall must outlast a batch's time limit and its retry delay (1 s here).
    "CELERY_TASK_TIME_LIMIT": 20,
    "CELERY_VISIBILITY_TIMEOUT": 60,
}
USERS = 20


@pytest.mark.long
def test_a_run_whose_batches_the_broker_lost_ends_and_the_next_one_runs(
    start_worker, make_admins, upstream, private_broker, settings, report_figure
):
    settings.ENTITLEMENTS_RUN_STALL_SECONDS = STALL_SECONDS
    upstream.latency = 0.5
    make_admins(USERS)
    start_worker(concurrency=1, redis_url=private_broker.url, **SETTINGS)
    request_resync(trigger=Trigger.ADMIN)
    wait_until(lambda: upstream.calls >= 2, timeout=60, message="the run's first batch")

    # Redis restarts empty: the queued batches and the one in flight are gone.
    private_broker.stop()
    private_broker.start()
    lost_at = time.monotonic()
    lost = SyncRun.objects.get()

    closed = wait_until(
        until_sweeping(
            lambda: SyncRun.objects.filter(pk=lost.pk).exclude(status="running").first()
        ),
        timeout=STALL_SECONDS + 90,
        every=0.5,
        message="the lost run to be closed",
    )
    closed_in = time.monotonic() - lost_at
    assert (closed.status, closed.error_code) == ("failed", "incomplete")
    assert closed.users_done + closed.users_failed + closed.users_skipped < USERS

    request_resync(trigger=Trigger.ADMIN)
    following = wait_until(
        lambda: SyncRun.objects.exclude(pk=lost.pk).exclude(status="running").first(),
        timeout=90,
        message="the next run to end",
    )
    assert following.status == "done", "the lost run no longer holds up the next one"
    assert (following.users_enqueued, following.users_done) == (USERS, USERS)

    admin = Client()
    admin.force_login(User.objects.create_superuser(email="ops@example.org", password="x" * 20))
    page = admin.get(reverse("admin:core_syncrun_change", args=[closed.pk])).content.decode()
    assert "its tasks were lost" in page
    assert f"No batch of this run reported for {STALL_SECONDS} s" in page
    report_figure(
        f"faults/lost run: Redis restarted empty during a run of {USERS} users; the run was "
        f"closed failed/incomplete {closed_in:.0f} s later (ENTITLEMENTS_RUN_STALL_SECONDS="
        f"{STALL_SECONDS}, sweep every 2 s), the next run did {following.users_done}/{USERS}. "
        "Before: the run stayed running and every run for an hour was skipped"
    )
