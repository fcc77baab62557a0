"""What resolves by itself through time limits and lock TTLs, with the state visible:

- a task that outlives its time limit (a bulk batch whose upstream hangs past
  CELERY_TASK_TIME_LIMIT) is killed, its users' locks expire, the task's FAILURE and each user's
  unfinished sync show, and a later sync succeeds;
- a full run that overlaps the next scheduled one: the second is recorded as skipped;
- a lock left by a process killed while holding it (SIGKILL): the next syncs wait, then proceed
  once it expires.

The fast variants stand for the wait on a lock's remaining time to live by shortening it to
1 s in Redis (after checking it is no longer than the documented TTL); the slow variants wait
the real TTLs (90 s for a user's lock, CELERY_TASK_TIME_LIMIT + 60 s for a run's).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from django.core.cache import cache
from django.utils import timezone
from django_celery_results.models import TaskResult

from core.entitlements.sync_requests import request_resync, request_sync
from core.locks import USER_LOCK_TTL, run_lock, user_lock
from core.models import EntitlementSyncState, MailDomainAccess, SyncRun
from tests.faults.conftest import ALPHA, BETA, synced_domains, until_sweeping
from tests.support import wait_until
from tests.support.workers import BASE_DIR

TIME_LIMIT = 10
TTL_SETTINGS = {
    "CELERY_TASK_TIME_LIMIT": TIME_LIMIT,
    "CELERY_VISIBILITY_TIMEOUT": 60,
    "ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS": 1,
    "ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS": 0.5,
    "ENTITLEMENTS_SYNC_MAX_RETRIES": 8,
    "ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS": 10,
    "ENTITLEMENTS_RESYNC_INTERVAL_SECONDS": 60,
}
RUN_LOCK_TTL = TIME_LIMIT + 60


def let_expire(lock, *, real_ttl: float, wait_for_real: bool) -> float:
    """Let the lock expire: wait its real TTL, or (fast) shorten what is left to 1 s once it
    is shown to be at most `real_ttl`; return the seconds it had left."""
    left = cache.client.get_client().pttl(cache.make_key(lock.key)) / 1000
    assert 0 < left <= real_ttl, f"{lock.key} has {left} s left, more than its TTL {real_ttl}"
    if not wait_for_real:
        cache.client.get_client().pexpire(cache.make_key(lock.key), 1000)
    return left


def sweep_until(predicate, *, timeout: float, message: str) -> None:
    """What beat does: send the sweep every few seconds until `predicate` holds."""
    wait_until(until_sweeping(predicate), timeout=timeout, every=0.25, message=message)


def run_task_over_its_time_limit(
    start_worker, make_admins, upstream, settings, report_figure, *, wait_for_real
):
    settings.ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS = 10
    # The read timeout outlasts the task: only the time limit can stop the batch.
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = upstream.backend_parameters(timeout=[2.0, 30.0])
    users = make_admins(2, held=(ALPHA,))
    start_worker(concurrency=1, **TTL_SETTINGS)
    upstream.hang(TIME_LIMIT * 3)

    request_resync(trigger="periodic")
    started = time.monotonic()
    batch = wait_until(
        lambda: TaskResult.objects.filter(
            task_name="entitlements.sync_users_batch", status="FAILURE"
        ).first(),
        timeout=TIME_LIMIT + 30,
        every=0.25,
        message="the batch to be killed at its hard time limit",
    )
    killed_after = time.monotonic() - started
    assert "TimeLimitExceeded" in batch.result
    # Visible: each user's sync started and never finished; the run is still running.
    for state in EntitlementSyncState.objects.filter(user__in=users):
        assert state.started_at and not state.finished_at, state
    assert SyncRun.objects.get().status == SyncRun.Status.RUNNING
    assert all(synced_domains(user) == {ALPHA} for user in users), "a hung upstream revoked"
    upstream.recover()

    locks = [user_lock(user.pk) for user in users]
    assert all(lock.locked() for lock in locks), "the killed threads' locks are left"
    left = [let_expire(lock, real_ttl=USER_LOCK_TTL, wait_for_real=wait_for_real) for lock in locks]
    resolved = time.monotonic()
    for user in users:
        request_sync(user=user, trigger="login")
    sweep_until(
        lambda: all(synced_domains(user) == {ALPHA, BETA} for user in users),
        timeout=max(left) + 60 if wait_for_real else 30,
        message="the later syncs",
    )
    report_figure(
        f"faults/task over its time limit (batch, upstream hanging {TIME_LIMIT * 3} s, "
        f"limit {TIME_LIMIT} s): killed after {killed_after:.0f} s, FAILURE "
        f"TimeLimitExceeded recorded, users shown started-not-finished, accesses kept; "
        f"their locks had {max(left):.0f} s left (TTL {USER_LOCK_TTL} s)"
        + (
            f", the later syncs succeeded {time.monotonic() - resolved:.0f} s later"
            if wait_for_real
            else ", the later syncs succeeded once they expired"
        )
    )


@pytest.mark.long
def test_a_task_over_its_time_limit_is_killed_and_its_locks_expire(
    start_worker, make_admins, upstream, settings, report_figure
):
    run_task_over_its_time_limit(
        start_worker, make_admins, upstream, settings, report_figure, wait_for_real=False
    )


@pytest.mark.slow
def test_a_task_over_its_time_limit_waiting_the_real_lock_ttl(
    start_worker, make_admins, upstream, settings, report_figure
):
    run_task_over_its_time_limit(
        start_worker, make_admins, upstream, settings, report_figure, wait_for_real=True
    )


@pytest.mark.long
def test_a_full_run_overlapping_the_next_one_is_recorded_as_skipped(
    start_worker, make_admins, upstream, report_figure
):
    upstream.latency = 0.3
    make_admins(30, held=(ALPHA,))
    start_worker(
        concurrency=1, ENTITLEMENTS_SYNC_BATCH_SIZE=3, ENTITLEMENTS_SYNC_BATCH_CONCURRENCY=1
    )

    # The next scheduled run is queued right behind the first: it starts once the first has
    # fanned out its batches (they queue after it), while the first is still running.
    request_resync(trigger="periodic")
    request_resync(trigger="periodic")
    first, second = wait_until(
        lambda: (
            list(SyncRun.objects.order_by("pk"))
            if SyncRun.objects.filter(finished_at__isnull=False).exists()
            else None
        ),
        timeout=60,
        message="the second run's outcome",
    )
    assert (second.status, second.users_enqueued) == (SyncRun.Status.SKIPPED, 0)
    assert second.finished_at is not None
    first = wait_until(
        lambda: SyncRun.objects.filter(pk=first.pk, status=SyncRun.Status.DONE).first(),
        timeout=60,
        message="the first run to finish",
    )
    assert second.started_at < first.finished_at, "the second run overlapped the first"
    assert (first.users_enqueued, first.users_done, first.users_failed) == (30, 30, 0)
    request_resync(trigger="periodic")
    third = wait_until(
        lambda: SyncRun.objects.exclude(pk__in=[first.pk, second.pk]).first(),
        message="the run after",
    )
    assert third.status != SyncRun.Status.SKIPPED
    report_figure(
        f"faults/overlapping full runs: the next run started "
        f"{(first.finished_at - second.started_at).total_seconds():.1f} s before the first "
        f"(30 users) finished and was recorded skipped (0 enqueued); the one after ran"
    )


def hold_locks_then_die(*, env: dict, user_id) -> None:
    """A process takes a user's lock and the full run's lock, then is SIGKILLed holding them."""
    script = textwrap.dedent(
        f"""
        import django
        django.setup()
        from core.locks import run_lock
        from core.locks import user_lock
        assert user_lock({str(user_id)!r}, owner="killed-task").acquire()
        assert run_lock(scope_key="all").acquire()
        print("held", flush=True)
        import time
        time.sleep(600)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=BASE_DIR,
        env={**env, "DJANGO_SETTINGS_MODULE": "messages.settings"},
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=10)


def run_killed_lock_holder(
    start_worker, make_admins, upstream, settings, report_figure, *, wait_for_real
):
    settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS = 0
    [user] = make_admins(1, held=(ALPHA,))
    worker = start_worker(concurrency=2, **TTL_SETTINGS)
    hold_locks_then_die(env=worker.env, user_id=user.pk)

    requested_at = timezone.now()
    task_id = request_sync(user=user, trigger="login").task_id
    wait_until(
        lambda: TaskResult.objects.filter(task_id=task_id, status="RETRY").exists(),
        message="the login sync to wait for the dead holder's lock",
    )
    request_resync(trigger="periodic")
    blocked_run = wait_until(lambda: SyncRun.objects.first(), message="the full run")
    assert blocked_run.status == SyncRun.Status.SKIPPED
    assert synced_domains(user) == {ALPHA}

    user_left = let_expire(user_lock(user.pk), real_ttl=USER_LOCK_TTL, wait_for_real=wait_for_real)
    run_left = let_expire(
        run_lock(scope_key="all"), real_ttl=RUN_LOCK_TTL, wait_for_real=wait_for_real
    )
    sweep_until(
        lambda: synced_domains(user) == {ALPHA, BETA},
        timeout=user_left + 60 if wait_for_real else 30,
        message="the login sync once the lock expired",
    )
    state = EntitlementSyncState.objects.get(user=user)
    assert state.status == "ok" and state.started_at > requested_at
    wait_until(
        lambda: not run_lock(scope_key="all").locked(),
        timeout=run_left + 30,
        every=0.5,
        message="the run lock to expire",
    )
    request_resync(trigger="periodic")
    next_run = wait_until(
        lambda: SyncRun.objects.exclude(pk=blocked_run.pk).first(), message="the next run"
    )
    assert next_run.status != SyncRun.Status.SKIPPED
    assert MailDomainAccess.objects.filter(user=user).count() == 2
    report_figure(
        f"faults/lock left by a SIGKILLed holder: the login sync retried (RETRY shown), the full "
        f"run was recorded skipped; the locks had {user_left:.0f} s (user, TTL "
        f"{USER_LOCK_TTL} s) and {run_left:.0f} s (run, TTL {RUN_LOCK_TTL} s) left; once "
        f"expired the sync and the next run proceeded"
        + (" (real TTLs waited)" if wait_for_real else "")
    )


def test_locks_left_by_a_killed_holder_expire_and_the_syncs_proceed(
    start_worker, make_admins, upstream, settings, report_figure
):
    run_killed_lock_holder(
        start_worker, make_admins, upstream, settings, report_figure, wait_for_real=False
    )


@pytest.mark.slow
def test_locks_left_by_a_killed_holder_expire_after_their_real_ttl(
    start_worker, make_admins, upstream, settings, report_figure
):
    run_killed_lock_holder(
        start_worker, make_admins, upstream, settings, report_figure, wait_for_real=True
    )
