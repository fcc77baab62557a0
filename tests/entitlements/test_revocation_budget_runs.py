"""The revocation budget in real full runs: the in-process worker on the test Redis and
PostgreSQL, batches in parallel, a scripted upstream."""

import io
import logging
import threading
import time

from django.core.management import call_command
from django.db import connections

from core.entitlements import sync_run_batch
from core.entitlements.runs import start_run
from core.models import (
    AccessAuditEntry,
    HeldRevocation,
    MailDomainAccess,
    SyncRun,
    User,
)
from tests import figures
from tests.support import wait_until

ALPHA = "alpha.example.org"
SYNC = MailDomainAccess.Source.ENTITLEMENTS
GUARD_LOGGER = "core.entitlements.revocation_budget"

_measured: list[str] = []


@figures.reporter
def _figures() -> list[str]:
    return list(_measured)


def full_run(worker, *, trigger="periodic") -> SyncRun:
    """Run entitlements.sync_all_admins on the worker and wait for its run to close."""
    run_id = worker.send_task("entitlements.sync_all_admins", args=[trigger]).get(timeout=30)[
        "run_id"
    ]
    wait_until(
        lambda: SyncRun.objects.get(pk=run_id).status == "done", timeout=60, message="the run"
    )
    return SyncRun.objects.get(pk=run_id)


def synced_accesses() -> int:
    return MailDomainAccess.objects.filter(source=SYNC).count()


def test_upstream_emptying_everyones_list_revokes_the_budget_and_holds_the_rest(
    worker, make_synced_admins, scripted_upstream, settings, caplog
):
    settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0.1
    settings.ENTITLEMENTS_MAX_REVOKE_MIN = 10
    # Not what this test is about: the upstream rate limit would pace the run at 50 users/s.
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0
    users = make_synced_admins(1000)
    # The upstream answers, for everyone, a valid empty list.
    scripted_upstream(admins_by_email={user.email: [] for user in users})

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger=GUARD_LOGGER):
        run = full_run(worker)
    elapsed = time.monotonic() - started

    assert (run.users_enqueued, run.users_done, run.users_failed) == (1000, 1000, 0)
    assert (run.revocable_accesses, run.revoke_budget, run.accesses_revoked) == (1000, 100, 100)
    assert (run.budget_reached, run.error_code) == (True, "revocations_held")
    assert synced_accesses() == 900, "every held access stays"
    held = HeldRevocation.objects.filter(run=run, resolution="pending")
    assert held.count() == 900
    assert AccessAuditEntry.objects.filter(action="revoked").count() == 100
    # Nothing lost: each user either lost alpha with an audit row, or still has it, held.
    revoked_users = set(AccessAuditEntry.objects.values_list("user_id", flat=True))
    held_users = set(held.values_list("user_id", flat=True))
    assert revoked_users.isdisjoint(held_users)
    assert len(revoked_users | held_users) == 1000
    [report] = [record for record in caplog.records if record.name == GUARD_LOGGER]
    assert report.levelno == logging.ERROR
    assert f"resync run {run.pk} reached its revocation budget" in report.getMessage()
    assert "@" not in report.getMessage()
    _measured.append(
        f"blast radius: upstream emptied 1000 users' lists: {run.accesses_revoked} revoked "
        f"(budget {run.revoke_budget}), {held.count()} held, "
        f"{1000 - run.accesses_revoked - held.count()} lost; full run {elapsed:.1f} s"
    )


def test_a_normal_run_revoking_a_few_holds_nothing(worker, make_synced_admins, scripted_upstream):
    users = make_synced_admins(50)
    leaving = users[:3]
    scripted_upstream(
        admins_by_email={user.email: [] if user in leaving else [ALPHA] for user in users}
    )

    run = full_run(worker)

    assert (run.revoke_budget, run.accesses_revoked, run.budget_reached) == (10, 3, False)
    assert run.error_code == ""
    assert not HeldRevocation.objects.exists()
    assert synced_accesses() == 47


def test_the_next_run_holds_every_revocation_while_held_ones_are_pending(
    worker, make_synced_admins, scripted_upstream, settings, caplog
):
    settings.ENTITLEMENTS_MAX_REVOKE_MIN = 2
    settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0
    users = make_synced_admins(5)
    scripted_upstream(admins_by_email={user.email: [] for user in users})
    first = full_run(worker)
    assert (first.accesses_revoked, HeldRevocation.objects.count()) == (2, 3)

    # The upstream is back, except for one user who really lost alpha meanwhile.
    still_admins = [user for user in users if synced_accesses_of(user)]
    leaver = still_admins[0]
    scripted_upstream(
        admins_by_email={user.email: [] if user == leaver else [ALPHA] for user in users}
    )
    with caplog.at_level(logging.ERROR, logger=GUARD_LOGGER):
        second = full_run(worker)

    assert (second.revoke_budget, second.accesses_revoked, second.budget_reached) == (0, 0, True)
    assert synced_accesses_of(leaver), "held too: the first run's held revocations wait"
    assert "held revocations of an earlier run are pending" in caplog.text
    # Once an operator has dealt with them, runs revoke again.
    call_command("release_held_revocations", "--all", stdout=io.StringIO())
    assert not synced_accesses_of(leaver)
    assert full_run(worker).revoke_budget == 2


def synced_accesses_of(user) -> int:
    return MailDomainAccess.objects.filter(user=user, source=SYNC).count()


def test_parallel_batches_racing_at_the_boundary_never_exceed_the_budget(
    transactional_db, make_synced_admins, scripted_upstream, settings
):
    """Two batches of one run at once, each with eight threads, each thread its own database
    connection: the sum of their revocations is the budget, never more, over five runs."""
    settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0.25
    settings.ENTITLEMENTS_MAX_REVOKE_MIN = 0
    settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY = 8
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0
    revoked_per_run = []
    for _ in range(5):
        users = make_synced_admins(80)
        scripted_upstream(admins_by_email={user.email: [] for user in users})
        run = start_run(scope=SyncRun.Scope.ALL, trigger="periodic", task_id="")
        budget = run.revoke_budget
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_batch_at_once, args=(half, run.pk, barrier))
            for half in (users[:40], users[40:])
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        run.refresh_from_db()
        revoked = AccessAuditEntry.objects.filter(
            user__in=users, action="revoked", trigger="periodic"
        ).count()
        assert run.accesses_revoked == revoked == budget
        assert HeldRevocation.objects.filter(run=run).count() == 80 - budget
        assert MailDomainAccess.objects.filter(user__in=users).count() == 80 - budget
        revoked_per_run.append(revoked)
        # Start the next round afresh: 80 revocable accesses, nothing pending.
        User.objects.filter(pk__in=[user.pk for user in users]).delete()
        SyncRun.objects.filter(pk=run.pk).update(status="done")
    assert revoked_per_run == [20] * 5
    _measured.append(
        "blast radius: 2 parallel batches x 8 threads racing at a budget of 20 of 80, 5 runs: "
        f"revoked {revoked_per_run}, never more"
    )


def _batch_at_once(users, run_id: int, barrier: threading.Barrier) -> None:
    """One batch of the run, as its task runs it, started with the other one."""
    barrier.wait()
    try:
        sync_run_batch(
            run_id=run_id,
            user_ids=[str(user.pk) for user in users],
            trigger="periodic",
            task_id="",
        )
    finally:
        connections.close_all()


def test_a_login_sync_revokes_a_held_access_and_the_release_finds_it_gone(
    worker, make_synced_admins, scripted_upstream, settings
):
    from core.entitlements.sync_requests import request_sync

    settings.ENTITLEMENTS_MAX_REVOKE_MIN = 0
    settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0
    users = make_synced_admins(3)
    scripted_upstream(admins_by_email={user.email: [] for user in users})
    run = full_run(worker)
    assert HeldRevocation.objects.filter(run=run).count() == 3

    # A fresh per-user answer is authoritative for that user: not held.
    login_user = users[0]
    result = worker.AsyncResult(request_sync(user=login_user, trigger="login").task_id).get(
        timeout=20
    )
    assert result["removed"] == [ALPHA]
    assert not synced_accesses_of(login_user)

    out = io.StringIO()
    call_command("release_held_revocations", "--run", str(run.pk), stdout=out)

    assert "3 held revocation(s) of run" in out.getvalue()
    assert "2 revoked, 0 kept (the last answer names the domain again), 1 already gone" in (
        out.getvalue()
    )
    assert HeldRevocation.objects.get(user=login_user).resolution == "gone"
    assert AccessAuditEntry.objects.filter(user=login_user, action="revoked").count() == 1
    assert synced_accesses() == 0
