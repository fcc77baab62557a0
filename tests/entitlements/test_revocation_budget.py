"""The revocation budget on PostgreSQL: the reconcile's hook, the run budget and its exactness
under concurrent reservations."""

import threading

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from core.entitlements import discard_held_revocations
from core.entitlements.revocation_budget import RunRevocationBudget, new_run_budget
from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomainAccess,
    SyncRun,
)
from core.selectors import pending_held_revocations
from tests.support.revocations import names_of, reconcile, run_with_budget

ALPHA, BETA = "alpha.example.org", "beta.example.org"
MANUAL = MailDomainAccess.Source.MANUAL


class TestReconcileHook:
    def test_a_holding_guard_keeps_the_accesses_and_lists_them_as_held(self, make_synced_admins):
        [user] = make_synced_admins(1, names=(ALPHA, BETA))
        calls = []

        class Holding:
            def admit_batch(self, *, count):
                return False

            def __call__(self, *, user, maildomain_names):
                calls.append(maildomain_names)
                return False

        result = reconcile(user, guard=Holding())

        assert calls == [[ALPHA, BETA]]
        assert (result.removed, result.held, result.changed) == ([], [ALPHA, BETA], False)
        assert names_of(user) == {ALPHA, BETA}
        assert not AccessAuditEntry.objects.exists()
        # The answer is still recorded: the release re-checks against it.
        assert EntitlementSyncState.objects.get(user=user).entitled_domains == []

    def test_an_allowing_guard_lets_the_revocations_happen(self, make_synced_admins):
        [user] = make_synced_admins(1, names=(ALPHA, BETA))

        class Allowing:
            def admit_batch(self, *, count):
                return True

        result = reconcile(user, ALPHA, guard=Allowing())

        assert (result.removed, result.held) == ([BETA], [])
        assert names_of(user) == {ALPHA}

    def test_the_guard_is_not_asked_and_costs_nothing_when_nothing_is_revoked(
        self, make_synced_admins
    ):
        [user] = make_synced_admins(1)
        guard = RunRevocationBudget(run_id=run_with_budget(0).pk)
        reconcile(user, ALPHA, BETA)

        with CaptureQueriesContext(connection) as unguarded:
            reconcile(user, ALPHA, BETA)
        with CaptureQueriesContext(connection) as guarded:
            result = reconcile(user, ALPHA, BETA, guard=guard)

        assert result.unchanged == 2
        assert len(guarded.captured_queries) == len(unguarded.captured_queries)
        assert not any("core_syncrun" in query["sql"] for query in guarded.captured_queries)

    def test_a_per_user_sync_is_never_held(self, make_synced_admins):
        [user] = make_synced_admins(1)
        run_with_budget(0)
        HeldRevocation.objects.create(run=SyncRun.objects.get(), user=user, maildomain_name=BETA)

        result = reconcile(user, trigger="login")

        assert result.removed == [ALPHA]
        assert names_of(user) == set()


class TestRunGuard:
    def test_revokes_up_to_the_budget_then_holds_everything(self, make_synced_admins):
        users = make_synced_admins(5)
        run = run_with_budget(3)
        guard = RunRevocationBudget(run_id=run.pk)

        results = [reconcile(user, guard=guard) for user in users]

        assert [len(result.removed) for result in results] == [1, 1, 1, 0, 0]
        run.refresh_from_db()
        assert (run.accesses_revoked, run.budget_reached, run.error_code) == (
            3,
            True,
            "revocations_held",
        )
        held = pending_held_revocations()
        assert set(held.values_list("user_id", "maildomain_name")) == {
            (users[3].pk, ALPHA),
            (users[4].pk, ALPHA),
        }
        assert set(held.values_list("run_id", flat=True)) == {run.pk}

    def test_once_holding_a_user_whose_revocations_would_fit_is_held_too(self, make_synced_admins):
        first, second = make_synced_admins(2, names=(ALPHA, BETA))
        [third] = make_synced_admins(1, names=(BETA,))
        run = run_with_budget(3)

        assert reconcile(first, guard=RunRevocationBudget(run_id=run.pk)).removed == [ALPHA, BETA]
        # Two more exceed the one left: held, and from now on the run holds everything, in
        # every batch (a fresh guard each), even a revocation that would fit.
        assert reconcile(second, guard=RunRevocationBudget(run_id=run.pk)).held == [ALPHA, BETA]
        assert reconcile(third, guard=RunRevocationBudget(run_id=run.pk)).held == [BETA]
        assert SyncRun.objects.get(pk=run.pk).accesses_revoked == 2

    def test_a_rolled_back_reconcile_gives_its_reservation_back(self, make_synced_admins):
        [user] = make_synced_admins(1)
        run = run_with_budget(1)
        guard = RunRevocationBudget(run_id=run.pk)

        with pytest.raises(RuntimeError), transaction.atomic():
            reconcile(user, guard=guard)
            raise RuntimeError("the transaction fails after the reservation")

        run.refresh_from_db()
        assert (run.accesses_revoked, run.budget_reached) == (0, False)
        assert reconcile(user, guard=guard).removed == [ALPHA]

    def test_the_same_revocation_held_by_two_runs_is_one_pending_row(self, make_synced_admins):
        [user] = make_synced_admins(1)
        first, second = run_with_budget(0), run_with_budget(0)

        reconcile(user, guard=RunRevocationBudget(run_id=first.pk))
        reconcile(user, guard=RunRevocationBudget(run_id=second.pk))

        assert list(pending_held_revocations().values_list("run_id", flat=True)) == [first.pk]
        assert SyncRun.objects.get(pk=second.pk).budget_reached


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_exceed_the_budget(make_synced_admins):
    """30 users' reconciles, each in its own connection, all released at once at a budget of
    10: exactly 10 revoke, 20 are held, whatever the interleaving."""
    users = make_synced_admins(30)
    run = run_with_budget(10)
    guard = RunRevocationBudget(run_id=run.pk)
    barrier = threading.Barrier(len(users))
    results, errors = [], []

    def sync(user):
        try:
            barrier.wait()
            results.append(reconcile(user, guard=guard))
        except Exception as error:  # reported below
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sync, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert sum(len(result.removed) for result in results) == 10
    assert sum(len(result.held) for result in results) == 20
    assert SyncRun.objects.get(pk=run.pk).accesses_revoked == 10
    assert MailDomainAccess.objects.count() == 20
    assert pending_held_revocations().count() == 20


class TestBudget:
    def test_is_the_share_of_revocable_accesses_with_a_floor(self, make_synced_admins, settings):
        settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0.1
        settings.ENTITLEMENTS_MAX_REVOKE_MIN = 10
        make_synced_admins(250)
        # Made by hand: never revoked by the sync, so not counted.
        make_synced_admins(1, names=(BETA,), source=MANUAL)

        assert new_run_budget().revocable_accesses == 250
        assert new_run_budget().revoke_budget == 25
        settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0.01
        assert new_run_budget().revoke_budget == 10

    def test_strict_mode_counts_every_admin_access(self, make_synced_admins, settings):
        settings.ENTITLEMENTS_STRICT_MODE = True
        make_synced_admins(3, source=MANUAL)

        assert new_run_budget().revocable_accesses == 3

    def test_is_zero_while_held_revocations_are_pending(self, make_synced_admins):
        [user] = make_synced_admins(1)
        held = HeldRevocation.objects.create(
            run=run_with_budget(0), user=user, maildomain_name=ALPHA
        )

        assert new_run_budget().revoke_budget == 0
        discard_held_revocations(held=HeldRevocation.objects.filter(pk=held.pk))
        assert new_run_budget().revoke_budget == 10
