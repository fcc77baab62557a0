"""SIGKILL a worker in the middle of a sync: the pool child running it, 6 times at random
points (100 with `make test-slow`), and the whole worker (main process and pool, like a lost
machine). Every interrupted sync completes after the broker redelivers it: no access row
duplicated, no grant lost, nobody left half-reconciled, and the audit trail records each
change exactly once.

Real `celery -A messages worker` subprocesses (late acks, reject on worker lost), PostgreSQL,
Redis and the DeployCenter stub over HTTP. Kill points are drawn at random (the seed is printed)
among: while the upstream answers (stub latency), inside the reconcile transaction with its
writes done (a row lock held by the test stops its deferred foreign-key check at COMMIT), and
after the commit but before the message is acknowledged (a table lock stops the result store).
"""

import random
import statistics
import time
from contextlib import contextmanager

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from core.entitlements.sync_requests import request_sync
from core.locks import user_lock
from core.models import AccessAuditEntry, EntitlementSyncState, MailDomain
from tests.faults.conftest import (
    ALPHA,
    BETA,
    GAMMA,
    duplicate_access_rows,
    fault_seed,
    synced_domains,
    upstream_calls_by_email,
)
from tests.support import wait_until

UPSTREAM_LATENCY = 0.4
# Where a kill lands; each is drawn several times per run, in random order, at random delays.
WAITING_ON_UPSTREAM = "waiting on the upstream"
INSIDE_TRANSACTION = "inside the reconcile transaction, at its commit"
AFTER_COMMIT = "after the commit, before the ack"
PHASES = (WAITING_ON_UPSTREAM, INSIDE_TRANSACTION, AFTER_COMMIT)


def _conninfo() -> str:
    database = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=database["NAME"],
        user=database["USER"],
        password=database["PASSWORD"] or None,
        host=database["HOST"] or "127.0.0.1",
        port=database["PORT"] or 5432,
    )


@contextmanager
def held_lock(sql: str, params=()):
    """Hold a PostgreSQL lock from another connection until the block exits."""
    with psycopg.connect(_conninfo()) as blocker:
        blocker.execute(sql, params)
        try:
            yield
        finally:
            blocker.rollback()


def waiting_on_lock(statement: str) -> bool:
    """Whether a backend of this database waits on a lock in a statement containing this."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE %s",
            [f"%{statement}%"],
        )
        return cursor.fetchone()[0] > 0


def state_of(user) -> EntitlementSyncState:
    return EntitlementSyncState.objects.get(user=user)


def started_since(user, moment) -> bool:
    started = state_of(user).started_at
    return started is not None and started > moment


def finished_since(user, moment) -> bool:
    state = state_of(user)
    return bool(
        state.finished_at
        and state.finished_at > moment
        and state.started_at
        and state.finished_at >= state.started_at
    )


def worker_lost_count(worker) -> int:
    return worker.log().count("WorkerLostError('Worker exited prematurely: signal 9")


def assert_reconciled_exactly_once(users, task_ids) -> None:
    """Each user holds exactly the upstream's list, with one audit row per change."""
    for user, task_id in zip(users, task_ids, strict=True):
        assert synced_domains(user) == {ALPHA, BETA}, f"half-reconciled: {user.pk}"
        state = state_of(user)
        assert (state.status, state.last_task_id) == ("ok", task_id)
        assert state.entitled_domains == [ALPHA, BETA]
        trail = sorted(
            AccessAuditEntry.objects.filter(user=user).values_list(
                "action", "maildomain_name", "task_id"
            )
        )
        assert trail == [
            ("granted", ALPHA, task_id),
            ("granted", BETA, task_id),
            ("revoked", GAMMA, task_id),
        ], f"audit trail of {user.pk}"
    assert duplicate_access_rows() == 0


def kill_child_mid_sync(worker, stub, *, user, phase: str, delay: float) -> dict:
    """Request the user's sync, SIGKILL the pool child at `phase` + `delay`; return what
    happened (the phase observed, when the kill landed)."""
    before = worker_lost_count(worker)
    sent_at = timezone.now()
    task_id = request_sync(user=user, trigger="login").task_id
    wait_until(lambda: started_since(user, sent_at), message="the sync to start", every=0.005)
    if phase == WAITING_ON_UPSTREAM:
        wait_until(
            lambda: upstream_calls_by_email(stub)[user.email] >= 1,
            message="the upstream request",
            every=0.005,
        )
        time.sleep(delay)
        observed = WAITING_ON_UPSTREAM if not finished_since(user, sent_at) else "late"
        killed_at = timezone.now()
        worker.kill_pool_child()
        wait_until(lambda: worker_lost_count(worker) > before, message="the loss to be seen")
    elif phase == INSIDE_TRANSACTION:
        alpha = MailDomain.objects.get(name=ALPHA).pk
        with held_lock("SELECT 1 FROM core_maildomain WHERE id = %s FOR UPDATE", [alpha]):
            wait_until(
                lambda: waiting_on_lock("COMMIT"),
                message="the reconcile to block at its commit",
            )
            time.sleep(delay)
            observed, killed_at = INSIDE_TRANSACTION, timezone.now()
            worker.kill_pool_child()
            wait_until(lambda: worker_lost_count(worker) > before, message="the loss to be seen")
    else:
        with held_lock("LOCK TABLE django_celery_results_taskresult IN EXCLUSIVE MODE"):
            wait_until(
                lambda: (
                    synced_domains(user) == {ALPHA, BETA}
                    and waiting_on_lock("django_celery_results_taskresult")
                ),
                message="the commit, then the result store to block",
            )
            time.sleep(delay)
            observed, killed_at = AFTER_COMMIT, timezone.now()
            worker.kill_pool_child()
            # Released only once the main process decided to requeue: a result stored before
            # that decision would (rightly) stop the redelivery of an already finished sync.
            wait_until(lambda: worker_lost_count(worker) > before, message="the loss to be seen")
    worker.wait_for_pool()
    wait_until(
        lambda: finished_since(user, killed_at) and started_since(user, killed_at),
        timeout=30,
        message=f"the redelivered sync ({observed})",
    )
    return {
        "task_id": task_id,
        "phase": observed,
        "recovered_in": (state_of(user).finished_at - killed_at).total_seconds(),
    }


@pytest.fixture
def slow_upstream(upstream):
    """The stub answering after UPSTREAM_LATENCY, which widens the window to kill in."""
    upstream.latency = UPSTREAM_LATENCY
    return upstream


def run_child_kills(start_worker, make_admins, stub, report_figure, *, kills: int) -> None:
    rng = random.Random(fault_seed())
    worker = start_worker(concurrency=1)
    users = make_admins(kills, held=(GAMMA,))
    plan = [PHASES[index % len(PHASES)] for index in range(kills)]
    rng.shuffle(plan)

    outcomes = []
    for user, phase in zip(users, plan, strict=True):
        delay = rng.uniform(0, UPSTREAM_LATENCY * 0.9 if phase == WAITING_ON_UPSTREAM else 0.2)
        outcomes.append(kill_child_mid_sync(worker, stub, user=user, phase=phase, delay=delay))
        # The redelivered copy took back and released the lock its killed run left: released
        # just after the sync's state is written (a loaded machine may see the state first),
        # far sooner than the lock's TTL would free it.
        wait_until(
            lambda user=user: not user_lock(user.pk).locked(),
            timeout=10,
            message="the redelivered sync to release the user's lock",
        )

    assert_reconciled_exactly_once(users, [outcome["task_id"] for outcome in outcomes])
    phases = {phase: sum(o["phase"] == phase for o in outcomes) for phase in PHASES}
    assert sum(phases.values()) == kills, f"kills that missed the sync: {outcomes}"
    recovery = [outcome["recovered_in"] for outcome in outcomes]
    report_figure(
        f"faults/kill pool child: {kills}/{kills} kills recovered, "
        f"{duplicate_access_rows()} duplicates, 0 half-reconciled "
        f"({', '.join(f'{count} {phase}' for phase, count in phases.items())}); "
        f"kill to finished sync median {statistics.median(recovery):.2f} s, "
        f"max {max(recovery):.2f} s"
    )


# Twice at each point in the default suite; the 100-kill series is `make test-slow`'s.
@pytest.mark.long
def test_killing_the_pool_child_mid_sync_6_times(
    start_worker, make_admins, slow_upstream, report_figure
):
    run_child_kills(start_worker, make_admins, slow_upstream, report_figure, kills=6)


@pytest.mark.slow
def test_killing_the_pool_child_mid_sync_100_times(
    start_worker, make_admins, slow_upstream, report_figure
):
    run_child_kills(start_worker, make_admins, slow_upstream, report_figure, kills=100)


# The whole worker: its unacked messages come back after the visibility timeout (its minimum,
# 60 s), restored by another worker. Time limits follow the settings rule: twice the task time
# limit, and the retry delay plus the time limit twice, fit in the visibility timeout.
WHOLE_WORKER_SETTINGS = {
    "CELERY_VISIBILITY_TIMEOUT": 60,
    "CELERY_TASK_TIME_LIMIT": 20,
    "ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS": 1,
}


def kill_whole_worker_round(start_worker, make_admins, stub, rng, *, round_number: int) -> dict:
    """Three syncs in flight at different points; SIGKILL the whole worker; start another."""
    worker = start_worker(name=f"doomed{round_number}", concurrency=3, **WHOLE_WORKER_SETTINGS)
    upstream_users = make_admins(2, held=(GAMMA,), prefix=f"r{round_number}")
    [blocked_user] = make_admins(1, held=(GAMMA,), prefix=f"r{round_number}b")
    users = [*upstream_users, blocked_user]
    sent_at = timezone.now()
    task_ids = {}
    alpha = MailDomain.objects.get(name=ALPHA).pk
    with held_lock("SELECT 1 FROM core_maildomain WHERE id = %s FOR UPDATE", [alpha]):
        task_ids[blocked_user] = request_sync(user=blocked_user, trigger="login").task_id
        wait_until(lambda: waiting_on_lock("COMMIT"), message="a blocked commit")
        for user in upstream_users:
            time.sleep(rng.uniform(0, UPSTREAM_LATENCY / 2))
            task_ids[user] = request_sync(user=user, trigger="login").task_id
        wait_until(
            lambda: all(upstream_calls_by_email(stub)[u.email] for u in upstream_users),
            message="both upstream requests",
        )
        time.sleep(rng.uniform(0, UPSTREAM_LATENCY / 2))
        assert not any(finished_since(user, sent_at) for user in users)
        killed_at = time.monotonic()
        worker.kill()
    rescuer = start_worker(name=f"rescuer{round_number}", concurrency=2, **WHOLE_WORKER_SETTINGS)
    wait_until(
        lambda: all(finished_since(user, sent_at) for user in users),
        timeout=150,
        every=0.5,
        message="the redelivery after the visibility timeout",
    )
    # The next round's syncs must go to its own doomed worker.
    rescuer.stop()
    return {
        "users": users,
        "task_ids": [task_ids[user] for user in users],
        "recovered_in": time.monotonic() - killed_at,
    }


def run_whole_worker_kills(start_worker, make_admins, stub, report_figure, *, rounds: int) -> None:
    rng = random.Random(fault_seed())
    users, task_ids, recovery = [], [], []
    for round_number in range(rounds):
        outcome = kill_whole_worker_round(
            start_worker, make_admins, stub, rng, round_number=round_number
        )
        users += outcome["users"]
        task_ids += outcome["task_ids"]
        recovery.append(outcome["recovered_in"])

    assert_reconciled_exactly_once(users, task_ids)
    report_figure(
        f"faults/kill whole worker: {rounds} kill(s), {len(users)}/{len(users)} interrupted "
        f"syncs recovered, 0 duplicates, 0 half-reconciled; redelivered after "
        f"{min(recovery):.0f}-{max(recovery):.0f} s (visibility timeout 60 s)"
    )


@pytest.mark.long
def test_killing_the_whole_worker_mid_sync(start_worker, make_admins, slow_upstream, report_figure):
    run_whole_worker_kills(start_worker, make_admins, slow_upstream, report_figure, rounds=1)


@pytest.mark.slow
def test_killing_the_whole_worker_mid_sync_3_times(
    start_worker, make_admins, slow_upstream, report_figure
):
    run_whole_worker_kills(start_worker, make_admins, slow_upstream, report_figure, rounds=3)
