"""The blast-radius guard on PostgreSQL: the reconcile's hook, the run budget and its exactness
under concurrent reservations, the release and discard of held revocations."""

import threading
import uuid

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from core.entitlements import (
    RunRevocationBudget,
    UpstreamAnswer,
    discard_held_revocations,
    release_held_revocations,
)
from core.entitlements.reconcile import reconcile_admin_accesses
from core.entitlements.revocation_budget import new_run_budget
from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomain,
    MailDomainAccess,
    SyncRun,
    User,
)
from core.selectors import pending_held_revocations

ALPHA, BETA = "alpha.example.org", "beta.example.org"
SYNC = MailDomainAccess.Source.ENTITLEMENTS
MANUAL = MailDomainAccess.Source.MANUAL


@pytest.fixture
def domains(db):
    return {name: MailDomain.objects.create(name=name) for name in (ALPHA, BETA)}


def make_admins(count: int, domains, *, names=(ALPHA,), source=SYNC) -> list[User]:
    """Users holding accesses on `names`, with a last answer that named them."""
    batch = uuid.uuid4().hex[:8]
    users = User.objects.bulk_create(
        User(email=f"admin-{batch}-{number}@example.org", sub=f"{batch}-{number}", password="!")
        for number in range(count)
    )
    MailDomainAccess.objects.bulk_create(
        MailDomainAccess(user=user, maildomain=domains[name], source=source)
        for user in users
        for name in names
    )
    EntitlementSyncState.objects.bulk_create(
        EntitlementSyncState(user=user, status="ok", entitled_domains=list(names)) for user in users
    )
    return users


def names_of(user) -> set[str]:
    accesses = MailDomainAccess.objects.filter(user=user)
    return set(accesses.values_list("maildomain__name", flat=True))


def reconcile(user, *names, guard=None, trigger="periodic"):
    return reconcile_admin_accesses(
        user=user,
        answer=UpstreamAnswer.authoritative(names),
        trigger=trigger,
        revocation_budget=guard,
    )


def run_with_budget(budget: int) -> SyncRun:
    return SyncRun.objects.create(trigger="periodic", revoke_budget=budget, revocable_accesses=99)


class TestReconcileHook:
    def test_a_holding_guard_keeps_the_accesses_and_lists_them_as_held(self, domains):
        [user] = make_admins(1, domains, names=(ALPHA, BETA))
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

    def test_an_allowing_guard_lets_the_revocations_happen(self, domains):
        [user] = make_admins(1, domains, names=(ALPHA, BETA))

        class Allowing:
            def admit_batch(self, *, count):
                return True

        result = reconcile(user, ALPHA, guard=Allowing())

        assert (result.removed, result.held) == ([BETA], [])
        assert names_of(user) == {ALPHA}

    def test_the_guard_is_not_asked_and_costs_nothing_when_nothing_is_revoked(self, domains):
        [user] = make_admins(1, domains)
        guard = RunRevocationBudget(run_id=run_with_budget(0).pk)
        reconcile(user, ALPHA, BETA)

        with CaptureQueriesContext(connection) as unguarded:
            reconcile(user, ALPHA, BETA)
        with CaptureQueriesContext(connection) as guarded:
            result = reconcile(user, ALPHA, BETA, guard=guard)

        assert result.unchanged == 2
        assert len(guarded.captured_queries) == len(unguarded.captured_queries)
        assert not any("core_syncrun" in query["sql"] for query in guarded.captured_queries)

    def test_a_per_user_sync_is_never_held(self, domains):
        [user] = make_admins(1, domains)
        run_with_budget(0)
        HeldRevocation.objects.create(run=SyncRun.objects.get(), user=user, maildomain_name=BETA)

        result = reconcile(user, trigger="login")

        assert result.removed == [ALPHA]
        assert names_of(user) == set()


class TestRunGuard:
    def test_revokes_up_to_the_budget_then_holds_everything(self, domains):
        users = make_admins(5, domains)
        run = run_with_budget(3)
        guard = RunRevocationBudget(run_id=run.pk)

        results = [reconcile(user, guard=guard) for user in users]

        assert [len(result.removed) for result in results] == [1, 1, 1, 0, 0]
        run.refresh_from_db()
        assert (run.accesses_revoked, run.revocations_held, run.error_code) == (
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

    def test_once_holding_a_user_whose_revocations_would_fit_is_held_too(self, domains):
        first, second = make_admins(2, domains, names=(ALPHA, BETA))
        [third] = make_admins(1, domains, names=(BETA,))
        run = run_with_budget(3)

        assert reconcile(first, guard=RunRevocationBudget(run_id=run.pk)).removed == [ALPHA, BETA]
        # Two more exceed the one left: held, and from now on the run holds everything, in
        # every batch (a fresh guard each), even a revocation that would fit.
        assert reconcile(second, guard=RunRevocationBudget(run_id=run.pk)).held == [ALPHA, BETA]
        assert reconcile(third, guard=RunRevocationBudget(run_id=run.pk)).held == [BETA]
        assert SyncRun.objects.get(pk=run.pk).accesses_revoked == 2

    def test_a_rolled_back_reconcile_gives_its_reservation_back(self, domains):
        [user] = make_admins(1, domains)
        run = run_with_budget(1)
        guard = RunRevocationBudget(run_id=run.pk)

        with pytest.raises(RuntimeError), transaction.atomic():
            reconcile(user, guard=guard)
            raise RuntimeError("the transaction fails after the reservation")

        run.refresh_from_db()
        assert (run.accesses_revoked, run.revocations_held) == (0, False)
        assert reconcile(user, guard=guard).removed == [ALPHA]

    def test_the_same_revocation_held_by_two_runs_is_one_pending_row(self, domains):
        [user] = make_admins(1, domains)
        first, second = run_with_budget(0), run_with_budget(0)

        reconcile(user, guard=RunRevocationBudget(run_id=first.pk))
        reconcile(user, guard=RunRevocationBudget(run_id=second.pk))

        assert list(pending_held_revocations().values_list("run_id", flat=True)) == [first.pk]
        assert SyncRun.objects.get(pk=second.pk).revocations_held


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_exceed_the_budget(domains):
    """30 users' reconciles, each in its own connection, all released at once at a budget of
    10: exactly 10 revoke, 20 are held, whatever the interleaving."""
    users = make_admins(30, domains)
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
    def test_is_the_share_of_revocable_accesses_with_a_floor(self, domains, settings):
        settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0.1
        settings.ENTITLEMENTS_MAX_REVOKE_MIN = 10
        make_admins(250, domains)
        # Made by hand: never revoked by the sync, so not counted.
        make_admins(1, domains, names=(BETA,), source=MANUAL)

        assert new_run_budget().revocable_accesses == 250
        assert new_run_budget().revoke_budget == 25
        settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0.01
        assert new_run_budget().revoke_budget == 10

    def test_strict_mode_counts_every_admin_access(self, domains, settings):
        settings.ENTITLEMENTS_STRICT_MODE = True
        make_admins(3, domains, source=MANUAL)

        assert new_run_budget().revocable_accesses == 3

    def test_is_zero_while_held_revocations_are_pending(self, domains):
        [user] = make_admins(1, domains)
        held = HeldRevocation.objects.create(
            run=run_with_budget(0), user=user, maildomain_name=ALPHA
        )

        assert new_run_budget().revoke_budget == 0
        discard_held_revocations(held=HeldRevocation.objects.filter(pk=held.pk))
        assert new_run_budget().revoke_budget == 10


@pytest.fixture
def held_everywhere(domains):
    """Six users whose revocation of alpha a run held, then: two told alpha again by a login
    sync, one whose access was revoked by a login sync, one whose access was deleted by hand."""
    users = make_admins(6, domains)
    run = run_with_budget(0)
    guard = RunRevocationBudget(run_id=run.pk)
    for user in users:
        reconcile(user, guard=guard)
    told_again = users[:2]
    for user in told_again:
        reconcile(user, ALPHA, trigger="login")
    revoked_at_login = users[2]
    reconcile(revoked_at_login, trigger="login")
    deleted_by_hand = users[3]
    MailDomainAccess.objects.filter(user=deleted_by_hand).delete()
    return {
        "run": run,
        "told_again": told_again,
        "gone": [revoked_at_login, deleted_by_hand],
        "still_stale": users[4:],
    }


class TestRelease:
    def test_revokes_exactly_the_still_stale_ones_and_audits_them(self, held_everywhere):
        operator = User.objects.create_user(email="operator@example.org")
        held = HeldRevocation.objects.filter(run=held_everywhere["run"])

        report = release_held_revocations(held=held, operator=operator)

        assert report.as_dict() == {"revoked": 2, "kept": 2, "gone": 2}
        for user in held_everywhere["still_stale"]:
            assert names_of(user) == set()
            [entry] = AccessAuditEntry.objects.filter(user=user, trigger="release")
            assert (entry.action, entry.maildomain_name) == ("revoked", ALPHA)
        for user in held_everywhere["told_again"]:
            assert names_of(user) == {ALPHA}
        assert AccessAuditEntry.objects.filter(trigger="release").count() == 2
        resolutions = dict(held.values_list("user_id", "resolution"))
        assert {resolutions[user.pk] for user in held_everywhere["told_again"]} == {"kept"}
        assert {resolutions[user.pk] for user in held_everywhere["gone"]} == {"gone"}
        assert {resolutions[user.pk] for user in held_everywhere["still_stale"]} == {"revoked"}
        assert set(held.values_list("resolved_by", flat=True)) == {operator.pk}
        assert not pending_held_revocations().exists()

    def test_a_second_release_finds_nothing_left(self, held_everywhere):
        held = HeldRevocation.objects.all()
        release_held_revocations(held=held)

        assert release_held_revocations(held=held).as_dict() == {
            "revoked": 0,
            "kept": 0,
            "gone": 0,
        }
        assert AccessAuditEntry.objects.filter(trigger="release").count() == 2

    def test_dry_run_counts_and_writes_nothing(self, held_everywhere):
        report = release_held_revocations(held=HeldRevocation.objects.all(), dry_run=True)

        assert report.as_dict() == {"revoked": 2, "kept": 2, "gone": 2}
        assert pending_held_revocations().count() == 6
        assert all(names_of(user) == {ALPHA} for user in held_everywhere["still_stale"])
        assert not AccessAuditEntry.objects.filter(trigger="release").exists()

    def test_a_manual_access_is_never_released(self, held_everywhere):
        stale = held_everywhere["still_stale"][0]
        MailDomainAccess.objects.filter(user=stale).update(source=MANUAL)

        report = release_held_revocations(held=HeldRevocation.objects.filter(user=stale))

        assert report.gone == 1
        assert names_of(stale) == {ALPHA}

    def test_discard_keeps_the_accesses(self, held_everywhere):
        discarded = discard_held_revocations(held=HeldRevocation.objects.all())

        assert discarded == 6
        assert all(names_of(user) == {ALPHA} for user in held_everywhere["still_stale"])
        assert set(HeldRevocation.objects.values_list("resolution", flat=True)) == {"discarded"}
        assert release_held_revocations(held=HeldRevocation.objects.all()).revoked == 0
