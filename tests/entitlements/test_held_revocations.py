"""Held revocations on PostgreSQL: the release (re-checked against the last answer) and the
discard an operator applies."""

import pytest

from core.entitlements import discard_held_revocations, release_held_revocations
from core.entitlements.revocation_budget import RunRevocationBudget
from core.models import AccessAuditEntry, HeldRevocation, MailDomainAccess, User
from core.selectors import pending_held_revocations
from tests.support.revocations import names_of, reconcile, run_with_budget

ALPHA = "alpha.example.org"
MANUAL = MailDomainAccess.Source.MANUAL


@pytest.fixture
def held_everywhere(make_synced_admins):
    """Six users whose revocation of alpha a run held, then: two told alpha again by a login
    sync, one whose access was revoked by a login sync, one whose access was deleted by hand."""
    users = make_synced_admins(6)
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
