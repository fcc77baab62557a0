"""The entitlements tasks on a real worker (celery.contrib.pytest's in-process worker on the
test Redis and PostgreSQL), with the engine and a scripted upstream."""

import gc
import time
import uuid

import psutil
import pytest
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult

from core.entitlements import signal_rounds
from core.entitlements.change_signals import ChangeEvent, ChangeSignal, receive_change_signal
from core.entitlements.sync_requests import request_sync
from core.locks import run_lock, user_lock
from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    MailDomainAccess,
    SyncRun,
)
from core.task_names import TaskName
from tests.support import wait_until
from worker.tasks import SyncNotApplied

ALPHA, BETA, GAMMA = "alpha.example.org", "beta.example.org", "gamma.example.org"


@pytest.fixture
def fast_retries(settings):
    settings.ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS = 0.05
    settings.ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS = 0.2
    settings.ENTITLEMENTS_SYNC_MAX_RETRIES = 5


def accesses(user):
    return set(MailDomainAccess.objects.filter(user=user).values_list("maildomain__name", "source"))


class TestSyncUser:
    def test_requested_sync_grants_the_entitled_domains(
        self, worker, domains, scripted_upstream, make_user
    ):
        user = make_user()
        scripted_upstream(admins_by_email={user.email: [ALPHA, BETA, GAMMA]})

        task_id = request_sync(user=user, trigger="login").task_id
        result = worker.AsyncResult(task_id).get(timeout=20)

        assert result["status"] == "ok"
        assert result["added"] == [ALPHA, BETA]
        assert result["changed"] is True
        assert user.email not in str(result)
        assert accesses(user) == {(ALPHA, "entitlements"), (BETA, "entitlements")}
        state = EntitlementSyncState.objects.get(user=user)
        assert state.entitled_domains == [ALPHA, BETA, GAMMA]
        assert (state.last_trigger, state.last_task_id) == ("login", task_id)
        assert AccessAuditEntry.objects.filter(user=user, task_id=task_id).count() == 2

    def test_unavailable_upstream_retries_until_it_answers(
        self, worker, domains, scripted_upstream, make_user, fast_retries
    ):
        user = make_user()
        scripted_upstream(unavailable_emails=[user.email])

        task_id = request_sync(user=user, trigger="login").task_id
        wait_until(
            lambda: EntitlementSyncState.objects.filter(user=user, status="unavailable").exists(),
            message="a first attempt to fail",
        )
        scripted_upstream(admins_by_email={user.email: [ALPHA]})
        result = worker.AsyncResult(task_id).get(timeout=20)

        assert (result["status"], result["added"]) == ("ok", [ALPHA])
        assert accesses(user) == {(ALPHA, "entitlements")}

    def test_retries_are_bounded(
        self, worker, domains, scripted_upstream, make_user, fast_retries, settings
    ):
        settings.ENTITLEMENTS_SYNC_MAX_RETRIES = 2
        user = make_user()
        MailDomainAccess.objects.create(
            user=user, maildomain=domains[ALPHA], source=MailDomainAccess.Source.ENTITLEMENTS
        )
        scripted_upstream(unavailable_emails=[user.email])

        task_id = request_sync(user=user, trigger="login").task_id
        with pytest.raises(SyncNotApplied, match=r"not applied: unavailable \(http_503\)"):
            worker.AsyncResult(task_id).get(timeout=20)

        # Never revoke on an outage; Flower shows the sync failed.
        assert accesses(user) == {(ALPHA, "entitlements")}
        assert TaskResult.objects.get(task_id=task_id).status == "FAILURE"

    def test_waits_for_a_sync_that_started_before_the_request(
        self, worker, domains, scripted_upstream, make_user, fast_retries, settings
    ):
        settings.ENTITLEMENTS_SYNC_MAX_RETRIES = 50
        user = make_user()
        scripted_upstream(admins_by_email={user.email: [BETA]})
        older_sync = user_lock(user.pk)
        assert older_sync.acquire()

        task_id = request_sync(user=user, trigger="login").task_id
        wait_until(
            lambda: TaskResult.objects.filter(task_id=task_id, status="RETRY").exists(),
            message="the task to wait for the lock",
        )
        older_sync.release()
        result = worker.AsyncResult(task_id).get(timeout=20)

        assert (result["status"], result["added"]) == ("ok", [BETA])

    def test_gives_up_waiting_after_the_retries_and_leaves_the_request_to_the_sweep(
        self, worker, scripted_upstream, make_user, fast_retries, settings
    ):
        settings.ENTITLEMENTS_SYNC_MAX_RETRIES = 2
        user = make_user()
        with user_lock(user.pk) as held:
            assert held
            task_id = request_sync(user=user, trigger="login").task_id
            result = worker.AsyncResult(task_id).get(timeout=20)

        assert (result["status"], result["error_code"]) == ("skipped", "locked")
        state = EntitlementSyncState.objects.get(user=user)
        assert state.started_at is None, "never synced, so still outstanding for the sweep"

    def test_a_change_signals_sync_locked_out_requests_no_recheck_and_ends_its_round(
        self, worker, scripted_upstream, make_user, fast_retries, settings
    ):
        """Its lock held through every retry, the signal's settled sync never asked: it sends
        no recheck (which would count as the signal's last ask), the request stays
        outstanding for the sweep, and the user's next signal opens a new round."""
        settings.ENTITLEMENTS_SYNC_MAX_RETRIES = 2
        settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS = 0.0
        user = make_user()
        signal = ChangeSignal(event=ChangeEvent.ACCOUNT_UPDATED, account_email=user.email)
        with user_lock(user.pk) as held:
            assert held
            assert receive_change_signal(signal=signal).result == "requested"
            syncs = TaskResult.objects.filter(task_name=TaskName.SYNC_USER)
            wait_until(
                lambda: syncs.filter(status="SUCCESS").exists(),
                message="the signal's sync to give up",
            )
        [done] = syncs
        assert '"locked"' in done.result

        state = EntitlementSyncState.objects.get(user=user)
        assert state.started_at is None, "never synced, so still outstanding for the sweep"
        assert state.enqueued_at <= timezone.now(), "no recheck requested for later"
        assert signal_rounds.join_or_open(user_id=user.pk, now=time.time()), "a new round"

    def test_stops_when_a_running_sync_started_after_the_request(
        self, worker, scripted_upstream, make_user
    ):
        user = make_user()
        with user_lock(user.pk) as held:
            assert held
            task_id = request_sync(user=user, trigger="login").task_id
            # The running sync (lock holder) started after that request.
            EntitlementSyncState.objects.filter(user=user).update(started_at=timezone.now())
            result = worker.AsyncResult(task_id).get(timeout=20)

        assert (result["status"], result["error_code"]) == ("skipped", "served_by_running_sync")

    def test_a_redelivered_task_takes_back_the_lock_its_killed_run_left(
        self, worker, domains, scripted_upstream, make_user
    ):
        user = make_user()
        scripted_upstream(admins_by_email={user.email: [ALPHA]})
        task_id = str(uuid.uuid4())
        # The task's first run was killed mid-sync: it started after the request, never
        # finished, and left the user's lock under its task id. The broker redelivers it.
        EntitlementSyncState.objects.create(
            user=user, requested_at=timezone.now(), last_trigger="login"
        )
        EntitlementSyncState.objects.filter(user=user).update(started_at=timezone.now())
        assert user_lock(user.pk, owner=task_id).acquire()

        result = worker.send_task(
            "entitlements.sync_user", args=[str(user.pk), "login"], task_id=task_id
        ).get(timeout=20)

        assert result["status"] == "ok", result
        assert result["added"] == [ALPHA]
        assert not user_lock(user.pk).locked()

    def test_unknown_user_is_skipped(self, worker, make_user):
        result = worker.send_task(
            "entitlements.sync_user", args=["00000000-0000-0000-0000-000000000000", "admin"]
        ).get(timeout=20)

        assert (result["status"], result["error_code"]) == ("skipped", "unknown_user")

    def test_sweep_sends_a_request_that_never_ran(
        self, worker, domains, scripted_upstream, make_user
    ):
        user = make_user()
        scripted_upstream(admins_by_email={user.email: [ALPHA]})
        EntitlementSyncState.objects.create(
            user=user, requested_at=timezone.now(), last_trigger="login"
        )

        # The sweep keeps no result (it runs every minute, mostly sending nothing): the proof
        # is the sync it sent.
        worker.send_task("entitlements.sweep_pending_syncs")
        wait_until(lambda: accesses(user) == {(ALPHA, "entitlements")}, message="the sync")
        assert EntitlementSyncState.objects.get(user=user).last_trigger == "login"


@pytest.fixture
def population(transactional_db, domains, make_user):
    """Users in every situation the full resync must tell apart."""

    def user_with(state=None, access_source=None, domain=ALPHA):
        user = make_user()
        if state is not None:
            EntitlementSyncState.objects.create(user=user, **state)
        if access_source:
            MailDomainAccess.objects.create(
                user=user, maildomain=domains[domain], source=access_source
            )
        return user

    ok_no_domains = {"status": "ok", "entitled_domains": []}
    return {
        "revoked_upstream": user_with(
            {"status": "ok", "entitled_domains": [ALPHA]}, "entitlements"
        ),
        "never_synced": user_with(),
        "last_failed": user_with({"status": "invalid"}),
        "holds_synced_access": user_with(ok_no_domains, "entitlements", BETA),
        "named_unprovisioned": user_with({"status": "ok", "entitled_domains": [GAMMA]}),
        # Not covered: nothing of theirs comes from the sync.
        "plain_member": user_with(ok_no_domains),
        "manual_admin": user_with(ok_no_domains, "manual"),
    }


def test_full_resync_covers_exactly_who_may_change(population):
    from core.selectors import users_due_for_full_resync

    covered = {str(pk) for pk in users_due_for_full_resync()}

    expected = {
        str(population[name].pk)
        for name in (
            "revoked_upstream",
            "never_synced",
            "last_failed",
            "holds_synced_access",
            "named_unprovisioned",
        )
    }
    assert covered == expected


class TestFullResync:
    def test_periodic_run_revokes_and_grants_and_counts(
        self, worker, population, scripted_upstream, settings
    ):
        settings.ENTITLEMENTS_SYNC_BATCH_SIZE = 2
        settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY = 2
        revoked, last_failed = population["revoked_upstream"], population["last_failed"]
        scripted_upstream(
            admins_by_email={
                revoked.email: [],
                last_failed.email: [BETA],
                population["holds_synced_access"].email: [BETA],
                population["named_unprovisioned"].email: [GAMMA],
            }
        )

        totals = worker.send_task("entitlements.sync_all_admins", args=["periodic"]).get(timeout=20)
        run = SyncRun.objects.get(pk=totals["run_id"])
        wait_until(lambda: SyncRun.objects.get(pk=run.pk).status == "done", message="the run")

        run.refresh_from_db()
        assert totals["users_enqueued"] == 5
        assert (run.scope, run.trigger, run.users_enqueued) == ("all", "periodic", 5)
        assert (run.users_done, run.users_changed, run.users_failed, run.users_skipped) == (
            5,
            2,
            0,
            0,
        )
        assert run.finished_at is not None
        assert accesses(revoked) == set()
        assert accesses(last_failed) == {(BETA, "entitlements")}
        assert accesses(population["manual_admin"]) == {(ALPHA, "manual")}
        assert AccessAuditEntry.objects.filter(
            user=revoked, action="revoked", trigger="periodic"
        ).exists()

    def test_users_whose_upstream_stays_down_are_retried_then_counted_failed(
        self, worker, population, scripted_upstream, settings, fast_retries
    ):
        settings.ENTITLEMENTS_SYNC_MAX_RETRIES = 1
        settings.ENTITLEMENTS_SYNC_BATCH_SIZE = 10
        down = population["revoked_upstream"]
        scripted_upstream(unavailable_emails=[down.email])

        run_id = worker.send_task("entitlements.sync_all_admins", args=["admin"]).get(timeout=20)[
            "run_id"
        ]
        wait_until(lambda: SyncRun.objects.get(pk=run_id).status == "done", message="the run")

        run = SyncRun.objects.get(pk=run_id)
        assert (run.users_enqueued, run.users_done, run.users_failed) == (5, 4, 1)
        assert accesses(down) == {(ALPHA, "entitlements")}, "never revoke on an outage"

    def test_a_run_while_another_is_in_progress_is_recorded_as_skipped(
        self, worker, population, scripted_upstream
    ):
        in_progress = SyncRun.objects.create(trigger="periodic")

        totals = worker.send_task("entitlements.sync_all_admins", args=["admin"]).get(timeout=20)

        assert totals["run_status"] == "skipped"
        assert totals["users_enqueued"] == 0
        skipped = SyncRun.objects.get(pk=totals["run_id"])
        assert (skipped.status, skipped.trigger) == ("skipped", "admin")
        assert skipped.finished_at is not None
        in_progress.refresh_from_db()
        assert in_progress.status == "running"

    def test_a_run_while_another_holds_the_lock_is_recorded_as_skipped(
        self, worker, population, scripted_upstream
    ):
        with run_lock(scope_key="all") as held:
            assert held
            totals = worker.send_task("entitlements.sync_all_admins", args=["admin"]).get(
                timeout=20
            )

        assert totals["run_status"] == "skipped"
        assert SyncRun.objects.get(pk=totals["run_id"]).status == "skipped"

    def test_a_run_older_than_the_batch_expiry_no_longer_blocks(
        self, worker, population, scripted_upstream, settings
    ):
        stale = SyncRun.objects.create(trigger="periodic")
        SyncRun.objects.filter(pk=stale.pk).update(
            started_at=timezone.now()
            - timezone.timedelta(seconds=settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS + 1)
        )

        totals = worker.send_task("entitlements.sync_all_admins", args=["periodic"]).get(timeout=20)

        assert totals["run_status"] in ("running", "done")
        stale.refresh_from_db()
        assert (stale.status, stale.error_code) == ("failed", "incomplete")

    def test_an_empty_run_is_done_at_once(self, worker, scripted_upstream):
        totals = worker.send_task("entitlements.sync_all_admins", args=["periodic"]).get(timeout=20)

        assert (totals["run_status"], totals["users_enqueued"]) == ("done", 0)

    def test_batches_carry_ids_and_an_expiry_on_the_bulk_queue(
        self, transactional_db, population, broker_queues, settings
    ):
        from worker.tasks import sync_all_admins

        settings.ENTITLEMENTS_SYNC_BATCH_SIZE = 2

        totals = sync_all_admins.apply(args=["periodic"]).get()

        batches = broker_queues.messages("bulk")
        assert [len(batch["args"][0]) for batch in batches] == [2, 2, 1]
        assert {batch["task"] for batch in batches} == {"entitlements.sync_users_batch"}
        assert all(batch["args"][1:] == [totals["run_id"], "periodic"] for batch in batches)
        assert all(batch["expires"] for batch in batches)
        assert "@" not in str(batches)
        assert SyncRun.objects.get(pk=totals["run_id"]).users_enqueued == 5


def test_domain_resync_covers_its_admins_and_those_told_they_may_be(
    worker, domains, scripted_upstream, make_user
):
    manual_admin, told, outsider = make_user(), make_user(), make_user()
    MailDomainAccess.objects.create(user=manual_admin, maildomain=domains[ALPHA])
    EntitlementSyncState.objects.create(user=told, status="ok", entitled_domains=[ALPHA])
    scripted_upstream(admins_by_email={manual_admin.email: [ALPHA, BETA], told.email: [ALPHA]})

    totals = worker.send_task(
        "entitlements.sync_domain_admins", args=[str(domains[ALPHA].pk), "admin"]
    ).get(timeout=20)
    wait_until(lambda: SyncRun.objects.get(pk=totals["run_id"]).status == "done")

    run = SyncRun.objects.get(pk=totals["run_id"])
    assert (run.scope, run.maildomain_name, run.users_enqueued) == ("domain", ALPHA, 2)
    assert accesses(manual_admin) == {(ALPHA, "manual"), (BETA, "entitlements")}
    assert accesses(told) == {(ALPHA, "entitlements")}
    assert not EntitlementSyncState.objects.filter(user=outsider).exists()


def test_batch_threads_close_their_database_connections(
    transactional_db, population, scripted_upstream, settings
):
    from core.entitlements import sync_run_batch
    from tests.factories import SyncRunFactory

    settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY = 4
    ids = [str(user.pk) for user in population.values()]

    def open_connections():
        """This process's TCP connections to PostgreSQL (other processes may come and go)."""
        gc.collect()
        port = connection.settings_dict["PORT"] or 5432
        return sum(
            1
            for conn in psutil.Process().net_connections(kind="tcp")
            if conn.raddr and conn.raddr.port == int(port) and conn.status == "ESTABLISHED"
        )

    before = open_connections()
    for _ in range(3):
        run = SyncRunFactory(status="running", revoke_budget=1000)
        outcome = sync_run_batch(run_id=run.pk, user_ids=ids, trigger="admin", task_id="")
        assert sum(outcome.as_dict().values()) == len(ids)

    # Four threads per batch, three batches: a leak would leave twelve more.
    assert open_connections() <= before
