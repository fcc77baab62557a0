"""core/entitlements/accesses.py: every access the sync grants or revokes, with its audit row."""

import pytest

from core.entitlements import accesses
from core.entitlements.accesses import (
    Grant,
    Revocation,
    grant_accesses,
    grant_accesses_for_new_domains,
    revoke_accesses,
)
from core.models import AccessAuditEntry, MailDomainAccess, Trigger
from tests.factories import (
    EntitlementSyncStateFactory,
    MailDomainAccessFactory,
    MailDomainFactory,
    UserFactory,
)


def _trail():
    return sorted(
        AccessAuditEntry.objects.values_list(
            "user_id", "maildomain_name", "action", "trigger", "task_id"
        )
    )


def test_a_grant_is_a_sync_made_admin_access_and_one_audit_row(db, django_assert_num_queries):
    user, alpha, beta = UserFactory(), MailDomainFactory(), MailDomainFactory()
    grants = [Grant(user.pk, alpha.pk, alpha.name), Grant(user.pk, beta.pk, beta.name)]

    with django_assert_num_queries(2):
        grant_accesses(grants=grants, trigger=Trigger.LOGIN, task_id="t-1")

    assert sorted(
        MailDomainAccess.objects.values_list("maildomain__name", "role", "source")
    ) == sorted((domain.name, "admin", "entitlements") for domain in (alpha, beta))
    assert _trail() == sorted(
        (user.pk, domain.name, "granted", "login", "t-1") for domain in (alpha, beta)
    )


def test_a_row_made_by_hand_meanwhile_wins_over_the_grant(db):
    manual = MailDomainAccessFactory(source=MailDomainAccess.Source.MANUAL)
    grant = Grant(manual.user_id, manual.maildomain_id, manual.maildomain.name)

    grant_accesses(grants=[grant], trigger=Trigger.PERIODIC)

    assert MailDomainAccess.objects.get().source == MailDomainAccess.Source.MANUAL


def test_a_revocation_deletes_the_row_and_writes_one_audit_row(db, django_assert_num_queries):
    access = MailDomainAccessFactory(source=MailDomainAccess.Source.ENTITLEMENTS)
    kept = MailDomainAccessFactory(user=access.user)
    revocation = Revocation(access.user_id, access.pk, access.maildomain.name)

    with django_assert_num_queries(2):
        revoke_accesses(revocations=[revocation], trigger=Trigger.ADMIN, task_id="t-2")

    assert list(MailDomainAccess.objects.all()) == [kept]
    assert _trail() == [(access.user_id, access.maildomain.name, "revoked", "admin", "t-2")]


def test_nothing_to_write_makes_no_query(db, django_assert_num_queries):
    with django_assert_num_queries(0):
        grant_accesses(grants=[], trigger=Trigger.LOGIN)
        revoke_accesses(revocations=iter(()), trigger=Trigger.LOGIN)


@pytest.mark.parametrize("chunk", [200, 1], ids=["one-chunk", "a-chunk-per-domain"])
def test_new_domains_go_to_the_users_whose_last_answer_named_them(db, monkeypatch, chunk):
    monkeypatch.setattr(accesses, "_GRANT_CHUNK", chunk)
    alpha, beta = (
        MailDomainFactory(name="alpha.example.org"),
        MailDomainFactory(name="beta.example.org"),
    )
    named_both = EntitlementSyncStateFactory(entitled_domains=[alpha.name, beta.name]).user
    named_alpha = EntitlementSyncStateFactory(
        entitled_domains=[alpha.name, "later.example.org"]
    ).user
    EntitlementSyncStateFactory(entitled_domains=["other.example.org"])
    # Already an admin of beta by hand: kept as it is, not granted twice.
    MailDomainAccessFactory(user=named_both, maildomain=beta)

    granted = grant_accesses_for_new_domains(maildomains=[alpha, beta])

    assert granted == 2
    assert sorted(
        MailDomainAccess.objects.values_list("user_id", "maildomain__name", "source")
    ) == sorted(
        [
            (named_both.pk, alpha.name, "entitlements"),
            (named_both.pk, beta.name, "manual"),
            (named_alpha.pk, alpha.name, "entitlements"),
        ]
    )
    assert _trail() == sorted(
        (user.pk, alpha.name, "granted", "provisioning", "") for user in (named_both, named_alpha)
    )


def test_a_domain_nobody_was_told_of_is_granted_to_nobody(db):
    EntitlementSyncStateFactory(entitled_domains=["alpha.example.org"])

    assert grant_accesses_for_new_domains(maildomains=[MailDomainFactory()]) == 0
    assert not MailDomainAccess.objects.exists()
    assert not AccessAuditEntry.objects.exists()
