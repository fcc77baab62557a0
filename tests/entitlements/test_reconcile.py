"""The reconcile service on PostgreSQL: grants, revocations, what it leaves alone, its cost."""

import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.entitlements import grant_accesses_for_new_domains
from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.reconcile import (
    plan_admin_accesses,
    reconcile_admin_accesses,
    reconcile_many_admin_accesses,
)
from core.entitlements.results import RunCategory
from core.entitlements.revocation_budget import RunRevocationBudget
from core.models import AccessAuditEntry, EntitlementSyncState, MailDomain, MailDomainAccess, User
from core.selectors import users_entitled_to
from tests.factories import SyncRunFactory

ADMIN = MailDomainAccess.Role.ADMIN
MANUAL = MailDomainAccess.Source.MANUAL
SYNC = MailDomainAccess.Source.ENTITLEMENTS


@pytest.fixture
def user(db):
    return User.objects.create_user(email="admin@alpha.example.org")


@pytest.fixture
def domains(db):
    return {
        name: MailDomain.objects.create(name=name)
        for name in ("alpha.example.org", "beta.example.org", "gamma.example.org")
    }


def _answer(*names):
    return UpstreamAnswer.authoritative(names)


def _reconcile(user, answer, **kwargs):
    return reconcile_admin_accesses(
        user=user, answer=answer, trigger=kwargs.pop("trigger", "test"), **kwargs
    )


def _accesses(user):
    return dict(
        MailDomainAccess.objects.filter(user=user).values_list("maildomain__name", "source")
    )


def _audit(user):
    return sorted(
        AccessAuditEntry.objects.filter(user=user).values_list(
            "maildomain_name", "action", "trigger", "task_id"
        )
    )


def test_grants_missing_accesses_and_records_everything(user, domains):
    result = _reconcile(
        user, _answer("alpha.example.org", "beta.example.org"), trigger="login", task_id="t-1"
    )

    assert (result.status, result.added, result.removed, result.unchanged) == (
        "ok",
        ["alpha.example.org", "beta.example.org"],
        [],
        0,
    )
    assert result.changed
    assert _accesses(user) == {"alpha.example.org": SYNC, "beta.example.org": SYNC}
    assert set(MailDomainAccess.objects.filter(user=user).values_list("role", flat=True)) == {ADMIN}
    assert _audit(user) == [
        ("alpha.example.org", "granted", "login", "t-1"),
        ("beta.example.org", "granted", "login", "t-1"),
    ]
    state = EntitlementSyncState.objects.get(user=user)
    assert state.status == EntitlementSyncState.Status.OK
    assert state.entitled_domains == ["alpha.example.org", "beta.example.org"]
    assert state.answer_fingerprint == _answer("beta.example.org", "alpha.example.org").fingerprint
    assert (state.last_trigger, state.last_task_id, state.error_code) == ("login", "t-1", "")
    assert state.finished_at is not None


def test_revokes_only_what_the_sync_created(user, domains):
    _reconcile(user, _answer("alpha.example.org", "beta.example.org"))
    MailDomainAccess.objects.create(user=user, maildomain=domains["gamma.example.org"])

    result = _reconcile(user, _answer("alpha.example.org"), trigger="periodic", task_id="t-2")

    assert (result.added, result.removed, result.unchanged) == ([], ["beta.example.org"], 1)
    assert _accesses(user) == {"alpha.example.org": SYNC, "gamma.example.org": MANUAL}
    assert ("beta.example.org", "revoked", "periodic", "t-2") in _audit(user)


def test_manual_row_for_an_entitled_domain_stays_manual(user, domains):
    MailDomainAccess.objects.create(user=user, maildomain=domains["alpha.example.org"])

    result = _reconcile(user, _answer("alpha.example.org"))
    _reconcile(user, _answer())

    assert (result.added, result.unchanged) == ([], 1)
    assert _accesses(user) == {"alpha.example.org": MANUAL}
    assert _audit(user) == []


def test_strict_mode_owns_every_admin_row(user, domains, settings):
    settings.ENTITLEMENTS_STRICT_MODE = True
    MailDomainAccess.objects.create(user=user, maildomain=domains["alpha.example.org"])
    MailDomainAccess.objects.create(user=user, maildomain=domains["gamma.example.org"])

    result = _reconcile(user, _answer("alpha.example.org"))

    assert result.removed == ["gamma.example.org"]
    assert _accesses(user) == {"alpha.example.org": MANUAL}


def test_unknown_domains_are_remembered_then_granted_when_provisioned(user, domains):
    other = User.objects.create_user(email="other@alpha.example.org")
    _reconcile(user, _answer("alpha.example.org", "new.example.org"))
    _reconcile(other, _answer("new.example.org"))

    assert not MailDomain.objects.filter(name="new.example.org").exists()
    assert EntitlementSyncState.objects.get(user=user).entitled_domains == [
        "alpha.example.org",
        "new.example.org",
    ]
    assert set(users_entitled_to("new.example.org")) == {user.pk, other.pk}
    assert list(users_entitled_to("alpha.example.org")) == [user.pk]
    assert list(users_entitled_to("example.org")) == []

    new = MailDomain.objects.create(name="new.example.org")
    granted = grant_accesses_for_new_domains(maildomains=[new])

    assert granted == 2
    assert _accesses(user) == {"alpha.example.org": SYNC, "new.example.org": SYNC}
    assert _accesses(other) == {"new.example.org": SYNC}
    assert ("new.example.org", "granted", "provisioning", "") in _audit(user)
    # Granting again finds nothing to do; the next sync sees the rows as unchanged.
    assert grant_accesses_for_new_domains(maildomains=[new]) == 0
    assert _reconcile(other, _answer("new.example.org")).unchanged == 1


@pytest.mark.parametrize(
    ("kind", "error_code", "status"),
    [
        (AnswerKind.NO_INFORMATION, "no_organization", "no_information"),
        (AnswerKind.INVALID, "not_json", "invalid"),
        (AnswerKind.BAD_REQUEST, "missing_claim", "error"),
        (AnswerKind.CONFIGURATION_ERROR, "configuration", "error"),
    ],
)
def test_answers_that_are_not_authoritative_change_no_access(
    user, domains, kind, error_code, status
):
    _reconcile(user, _answer("alpha.example.org"))

    result = _reconcile(user, UpstreamAnswer.failure(kind, error_code))

    assert (result.status, result.error_code, result.changed) == (status, error_code, False)
    assert _accesses(user) == {"alpha.example.org": SYNC}
    state = EntitlementSyncState.objects.get(user=user)
    assert (state.status, state.error_code) == (status, error_code)
    assert state.entitled_domains == ["alpha.example.org"]
    assert state.answer_fingerprint == _answer("alpha.example.org").fingerprint


@pytest.mark.parametrize(
    ("answer", "category"),
    [
        (_answer("alpha.example.org", "beta.example.org"), RunCategory.CHANGED),
        (_answer("alpha.example.org"), RunCategory.DONE),
        (UpstreamAnswer.failure(AnswerKind.NO_INFORMATION, "no_organization"), RunCategory.DONE),
        (UpstreamAnswer.failure(AnswerKind.NOT_ASKED, "missing_claim"), RunCategory.SKIPPED),
        (UpstreamAnswer.failure(AnswerKind.INVALID, "not_json"), RunCategory.FAILED),
        (UpstreamAnswer.failure(AnswerKind.BAD_REQUEST, "http_400"), RunCategory.FAILED),
        (UpstreamAnswer.failure(AnswerKind.CONFIGURATION_ERROR, "http_401"), RunCategory.FAILED),
    ],
)
def test_a_syncs_result_says_how_it_counts_in_a_run(user, domains, answer, category):
    _reconcile(user, _answer("alpha.example.org"))

    assert _reconcile(user, answer).run_category is category


def test_unchanged_answer_writes_no_access_or_audit_row(user, domains):
    answer = _answer("alpha.example.org", "beta.example.org")
    _reconcile(user, answer)

    with CaptureQueriesContext(connection) as queries:
        result = _reconcile(user, answer, trigger="periodic")

    assert not result.changed
    assert result.unchanged == 2
    writes = [
        query["sql"]
        for query in queries.captured_queries
        if query["sql"].startswith(("INSERT", "UPDATE", "DELETE"))
    ]
    # Only the bookkeeping row is updated.
    assert len(writes) == 1
    assert writes[0].startswith('UPDATE "core_entitlementsyncstate"')
    assert EntitlementSyncState.objects.get(user=user).last_trigger == "periodic"


def test_dry_run_plans_and_writes_nothing(user, domains):
    MailDomainAccess.objects.create(user=user, maildomain=domains["gamma.example.org"], source=SYNC)

    with CaptureQueriesContext(connection) as queries:
        [result] = plan_admin_accesses(
            answers=[(user, _answer("alpha.example.org"))], trigger="test"
        )

    assert (result.added, result.removed) == (["alpha.example.org"], ["gamma.example.org"])
    assert all(query["sql"].startswith("SELECT") for query in queries.captured_queries)
    assert _accesses(user) == {"gamma.example.org": SYNC}
    assert not EntitlementSyncState.objects.filter(user=user).exists()


def _count_queries(user, answer):
    with CaptureQueriesContext(connection) as queries:
        _reconcile(user, answer)
    return len(queries.captured_queries)


def test_query_count_does_not_grow_with_the_number_of_domains(db):
    names = [f"d{number:03}.example.org" for number in range(500)]
    MailDomain.objects.bulk_create([MailDomain(name=name) for name in names])
    one = User.objects.create_user(email="one@example.org")
    many = User.objects.create_user(email="many@example.org")
    for user in (one, many):
        EntitlementSyncState.objects.create(user=user)

    grant_one = _count_queries(one, _answer(*names[:1]))
    grant_many = _count_queries(many, _answer(*names))
    revoke_one = _count_queries(one, _answer())
    revoke_many = _count_queries(many, _answer())

    assert MailDomainAccess.objects.filter(user=many).count() == 0
    assert AccessAuditEntry.objects.filter(user=many).count() == 1000
    assert grant_one == grant_many
    assert revoke_one == revoke_many


def test_first_sync_creates_the_state_row(user, domains):
    assert not EntitlementSyncState.objects.filter(user=user).exists()

    _reconcile(user, _answer("alpha.example.org"))

    assert EntitlementSyncState.objects.get(user=user).status == "ok"


@pytest.mark.parametrize("state_exists", [False, True], ids=["first sync", "later sync"])
def test_concurrent_reconciles_of_one_user_end_correct(transactional_db, state_exists):
    user = User.objects.create_user(email="admin@alpha.example.org")
    names = [f"d{number}.example.org" for number in range(20)]
    MailDomain.objects.bulk_create([MailDomain(name=name) for name in names])
    if state_exists:
        EntitlementSyncState.objects.create(user=user)
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    errors = []

    def reconcile():
        try:
            barrier.wait(timeout=10)
            _reconcile(user, _answer(*names))
        except Exception as error:  # any error fails the test below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=reconcile) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert sorted(_accesses(user)) == sorted(names)
    # Each grant was made, and audited, exactly once.
    assert AccessAuditEntry.objects.filter(user=user).count() == len(names)
    assert EntitlementSyncState.objects.filter(user=user).count() == 1


def _reconcile_many(pairs, **kwargs):
    return reconcile_many_admin_accesses(
        answers=list(pairs),
        trigger=kwargs.pop("trigger", "periodic"),
        **kwargs,
    )


def test_many_users_end_as_they_would_one_by_one(domains):
    granted, revoked, untouched, unanswered = (
        User.objects.create_user(email=f"{name}@alpha.example.org")
        for name in ("granted", "revoked", "untouched", "unanswered")
    )
    _reconcile(revoked, _answer("alpha.example.org", "beta.example.org"))
    _reconcile(untouched, _answer("gamma.example.org"))
    _reconcile(unanswered, _answer("alpha.example.org"))
    MailDomainAccess.objects.create(user=revoked, maildomain=domains["gamma.example.org"])

    results = _reconcile_many(
        [
            (granted, _answer("alpha.example.org", "new.example.org")),
            (revoked, _answer("beta.example.org")),
            (untouched, _answer("gamma.example.org")),
            (unanswered, UpstreamAnswer.failure(AnswerKind.NO_INFORMATION, "no_organization")),
        ],
        task_id="t-9",
    )

    assert [(r.user_id, r.status, r.added, r.removed, r.unchanged) for r in results] == [
        (str(granted.pk), "ok", ["alpha.example.org"], [], 0),
        (str(revoked.pk), "ok", [], ["alpha.example.org"], 1),
        (str(untouched.pk), "ok", [], [], 1),
        (str(unanswered.pk), "no_information", [], [], 0),
    ]
    assert _accesses(granted) == {"alpha.example.org": SYNC}
    assert _accesses(revoked) == {"beta.example.org": SYNC, "gamma.example.org": MANUAL}
    assert _accesses(unanswered) == {"alpha.example.org": SYNC}
    assert ("alpha.example.org", "revoked", "periodic", "t-9") in _audit(revoked)
    states = {state.user_id: state for state in EntitlementSyncState.objects.all()}
    assert states[granted.pk].entitled_domains == ["alpha.example.org", "new.example.org"]
    assert states[revoked.pk].entitled_domains == ["beta.example.org"]
    assert (states[unanswered.pk].status, states[unanswered.pk].error_code) == (
        "no_information",
        "no_organization",
    )
    assert states[unanswered.pk].entitled_domains == ["alpha.example.org"]
    assert {state.last_task_id for state in states.values()} == {"t-9"}


def _count_many_queries(pairs):
    with CaptureQueriesContext(connection) as queries:
        _reconcile_many(pairs)
    return len(queries.captured_queries)


def test_query_count_does_not_grow_with_the_number_of_users(db):
    names = [f"d{number:03}.example.org" for number in range(60)]
    MailDomain.objects.bulk_create([MailDomain(name=name) for name in names])
    users = [User.objects.create_user(email=f"u{number}@example.org") for number in range(31)]

    grant_one = _count_many_queries([(users[0], _answer(*names[:30]))])
    grant_thirty = _count_many_queries(
        [(user, _answer(*names[number : number + 30])) for number, user in enumerate(users[1:])]
    )
    swap_one = _count_many_queries([(users[0], _answer(names[59]))])
    swap_thirty = _count_many_queries(
        [(user, _answer(names[number + 30])) for number, user in enumerate(users[1:])]
    )

    assert grant_thirty == grant_one
    assert swap_thirty == swap_one
    assert MailDomainAccess.objects.count() == 31


def _statements(queries) -> int:
    """The statements sent; an executemany ("50 times: UPDATE ...") counts one per row."""
    return sum(
        int(sql.split(" times: ")[0]) if " times: " in sql else 1
        for sql in (query["sql"] for query in queries.captured_queries)
    )


@pytest.mark.parametrize(
    ("answered", "statements"),
    [("beta.example.org", 10), ("alpha.example.org", 5)],
    ids=["changed", "unchanged"],
)
def test_a_run_reconciles_50_users_in_a_few_statements(make_synced_admins, answered, statements):
    """Changed: the transaction's two ends, the states locked, the accesses and the new
    domains read, the run's budget, the accesses inserted and deleted, their audit rows, the
    states updated. Unchanged: the two ends, the two reads, the states updated."""
    users = make_synced_admins(50)
    budget = RunRevocationBudget(run_id=SyncRunFactory(revoke_budget=1000).pk)

    with CaptureQueriesContext(connection) as queries:
        _reconcile_many([(user, _answer(answered)) for user in users], revocation_budget=budget)

    assert _statements(queries) == statements
    assert (
        list(
            MailDomainAccess.objects.filter(user__in=users).values_list(
                "maildomain__name", flat=True
            )
        )
        == [answered] * 50
    )
    assert (
        list(
            EntitlementSyncState.objects.filter(user__in=users).values_list(
                "entitled_domains", flat=True
            )
        )
        == [[answered]] * 50
    )


def test_a_user_may_appear_only_once(user, domains):
    with pytest.raises(ValueError, match="once"):
        _reconcile_many([(user, _answer()), (user, _answer("alpha.example.org"))])
