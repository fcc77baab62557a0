"""A full resync's batch (worker.runs.sync_batch) on PostgreSQL and Redis: answers fetched by
threads, reconciled together, every lock released, one user's trouble never the others'."""

from collections.abc import Mapping
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.entitlements.backends.base import EntitlementsBackend, UpstreamAnswer
from core.entitlements.revocation_budget import RunRevocationBudget
from core.entitlements.runs import start_run
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, SyncRun, User
from worker.batches import sync_batch
from worker.locks import user_lock

ALPHA, BETA = "alpha.example.org", "beta.example.org"
VANISHING = "vanishing@example.org"


class UserDeletingBackend(EntitlementsBackend):
    """Names alpha for everyone, and deletes the user `vanishing@` while asked about them."""

    @property
    def forwarded_claim_names(self) -> list[str]:
        return []

    def get_entitlements(self, *, user, forwarded_claims: Mapping[str, Any]) -> UpstreamAnswer:
        if user.email == VANISHING:
            User.objects.filter(pk=user.pk).delete()
        return UpstreamAnswer.authoritative([ALPHA])


def _rights(user) -> set[str]:
    return set(
        MailDomainAccess.objects.filter(user=user).values_list("maildomain__name", flat=True)
    )


def test_a_batch_reconciles_its_users_and_releases_every_lock(
    transactional_db, make_user, scripted_upstream, settings
):
    settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY = 3
    MailDomain.objects.create(name=ALPHA)
    MailDomain.objects.create(name=BETA)
    users = [make_user() for _ in range(7)]
    scripted_upstream(admins_by_email={user.email: [ALPHA, BETA] for user in users[:5]})

    outcome = sync_batch(user_ids=[str(user.pk) for user in users], trigger="periodic", task_id="b")

    assert outcome.as_dict() == {
        "done": 7,
        "changed": 5,
        "failed": 0,
        "skipped": 0,
        "retrying": 0,
    }
    assert all(_rights(user) == {ALPHA, BETA} for user in users[:5])
    states = EntitlementSyncState.objects.filter(user__in=users)
    assert {(state.last_trigger, state.last_task_id) for state in states} == {("periodic", "b")}
    assert all(state.finished_at >= state.started_at for state in states)
    assert not any(user_lock(user.pk).locked() for user in users)


def test_a_user_whose_sync_runs_elsewhere_is_skipped_and_keeps_its_lock(
    transactional_db, make_user, scripted_upstream
):
    MailDomain.objects.create(name=ALPHA)
    busy, free = make_user(), make_user()
    scripted_upstream(admins_by_email={busy.email: [ALPHA], free.email: [ALPHA]})
    held = user_lock(busy.pk)
    assert held.acquire()
    try:
        outcome = sync_batch(user_ids=[str(busy.pk), str(free.pk)], trigger="admin", task_id="")

        assert (outcome.as_dict()["done"], outcome.as_dict()["skipped"]) == (1, 1)
        assert _rights(busy) == set()
        assert _rights(free) == {ALPHA}
        assert user_lock(busy.pk).locked(), "the other sync's lock must stay"
    finally:
        held.release()


def test_a_user_deleted_during_the_batch_is_skipped_and_the_others_synced(
    transactional_db, make_user, settings
):
    settings.ENTITLEMENTS_BACKEND = f"{__name__}.UserDeletingBackend"
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = {}
    settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY = 4
    MailDomain.objects.create(name=ALPHA)
    vanishing = make_user(email=VANISHING)
    others = [make_user() for _ in range(3)]

    outcome = sync_batch(
        user_ids=[str(user.pk) for user in [*others, vanishing]], trigger="periodic", task_id=""
    )

    assert (outcome.as_dict()["done"], outcome.as_dict()["skipped"]) == (3, 1)
    assert outcome.as_dict()["failed"] == 0
    assert not User.objects.filter(pk=vanishing.pk).exists()
    assert all(_rights(user) == {ALPHA} for user in others)
    assert not user_lock(vanishing.pk).locked()


def test_a_batch_within_its_run_budget_reserves_its_revocations_in_one_statement(
    transactional_db, make_user, scripted_upstream, settings
):
    settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY = 1
    alpha = MailDomain.objects.create(name=ALPHA)
    users = [make_user() for _ in range(6)]
    for user in users:
        MailDomainAccess.objects.create(
            user=user, maildomain=alpha, source=MailDomainAccess.Source.ENTITLEMENTS
        )
    scripted_upstream(admins_by_email={user.email: [] for user in users})
    run = start_run(scope=SyncRun.Scope.ALL, trigger="periodic", task_id="")
    SyncRun.objects.filter(pk=run.pk).update(revoke_budget=100)

    with CaptureQueriesContext(connection) as queries:
        sync_batch(
            user_ids=[str(user.pk) for user in users],
            trigger="periodic",
            task_id="",
            revocation_budget=RunRevocationBudget(run_id=run.pk),
        )

    reservations = [
        q for q in queries.captured_queries if q["sql"].startswith('UPDATE "core_syncrun"')
    ]
    # One batch, one thread: the answers arrive within one reconcile window or a few.
    assert 1 <= len(reservations) <= 3
    run.refresh_from_db()
    assert run.accesses_revoked == 6
    assert not MailDomainAccess.objects.filter(user__in=users).exists()


def test_a_redelivered_batch_takes_back_the_locks_its_killed_run_left(
    transactional_db, make_user, scripted_upstream
):
    MailDomain.objects.create(name=ALPHA)
    user = make_user()
    scripted_upstream(admins_by_email={user.email: [ALPHA]})
    # What a batch killed mid-way leaves: the user's lock, held under the batch's task id.
    assert user_lock(user.pk, owner="batch-1").acquire()

    outcome = sync_batch(user_ids=[str(user.pk)], trigger="periodic", task_id="batch-1")

    assert (outcome.as_dict()["done"], outcome.as_dict()["skipped"]) == (1, 0)
    assert _rights(user) == {ALPHA}
    assert not user_lock(user.pk).locked()
