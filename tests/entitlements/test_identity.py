"""The identity rule on PostgreSQL, against the local DeployCenter over HTTP (which matches
e-mails exactly, like the real server): an answer that would remove every access of a user
right after the e-mail sent upstream changed is held for an operator, never applied as `ok`."""

import logging

import pytest

from core.entitlements import plan_sync, release_held_revocations, sync_user_entitlements
from core.entitlements.identity import loses_everything_after_identity_change, upstream_identity
from core.entitlements.revocation_budget import new_run_budget
from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomain,
    MailDomainAccess,
    User,
)
from tests.deploycenter_stub import ALPHA_SIRET

ALPHA, BETA = "alpha.example.org", "beta.example.org"
ADMIN = "admin@alpha.example.org"


@pytest.fixture
def admin(db, deploycenter_backend, settings):
    """The stub's admin after a first sync: alpha and beta granted, their e-mail recorded."""
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 0
    for name in (ALPHA, BETA):
        MailDomain.objects.create(name=name)
    user = User.objects.create_user(email=ADMIN, sub="sub-admin")
    EntitlementSyncState.objects.create(user=user, forwarded_claims={"siret": ALPHA_SIRET})
    first = sync_user_entitlements(user_id=user.pk, trigger="login")
    assert (first.status, first.added) == ("ok", [ALPHA, BETA])
    return user


def sync(user, **options):
    return sync_user_entitlements(user_id=user.pk, trigger="admin", **options)


def names_of(user) -> set[str]:
    return set(
        MailDomainAccess.objects.filter(user=user).values_list("maildomain__name", flat=True)
    )


def change_email(user, email: str) -> None:
    User.objects.filter(pk=user.pk).update(email=email)


def test_the_first_sync_records_a_digest_of_the_email_sent(admin):
    state = EntitlementSyncState.objects.get(user=admin)
    assert state.upstream_identity == upstream_identity(ADMIN)
    assert ADMIN not in state.upstream_identity


def test_losing_everything_right_after_the_email_changed_is_held(
    admin, deploycenter_backend, caplog
):
    change_email(admin, "Admin@alpha.example.org")

    with caplog.at_level(logging.INFO):
        result = sync(admin)

    # DeployCenter found nobody with that exact e-mail: an authoritative empty list.
    assert deploycenter_backend.requests[-1]["query"]["account_email"] == [
        "Admin@alpha.example.org"
    ]
    assert (result.status, result.error_code) == ("revocations_held", "identity_changed")
    assert (result.removed, result.held, result.changed) == ([], [ALPHA, BETA], False)
    assert names_of(admin) == {ALPHA, BETA}
    assert not AccessAuditEntry.objects.filter(user=admin, action="revoked").exists()
    state = EntitlementSyncState.objects.get(user=admin)
    assert (state.status, state.error_code) == ("revocations_held", "identity_changed")
    # The old identity stays: the next sync holds again until an operator decides.
    assert state.upstream_identity == upstream_identity(ADMIN)
    held = HeldRevocation.objects.filter(user=admin)
    assert sorted(held.values_list("maildomain_name", "reason", "run", "resolution")) == [
        (ALPHA, "identity_changed", None, "pending"),
        (BETA, "identity_changed", None, "pending"),
    ]
    [warning] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert "e-mail sent upstream changed" in warning.getMessage()
    assert str(admin.pk) in warning.getMessage()
    assert "dmin@alpha" not in caplog.text


def test_a_held_identity_change_stays_held_at_each_sync_without_new_rows(admin):
    change_email(admin, "Admin@alpha.example.org")
    sync(admin)

    again = sync(admin)

    assert (again.status, again.held) == ("revocations_held", [ALPHA, BETA])
    assert names_of(admin) == {ALPHA, BETA}
    assert HeldRevocation.objects.filter(user=admin).count() == 2


def test_an_operators_release_revokes_then_the_new_email_is_recorded(admin):
    change_email(admin, "Admin@alpha.example.org")
    sync(admin)

    report = release_held_revocations(held=HeldRevocation.objects.filter(user=admin))
    after = sync(admin)

    assert report.revoked == 2
    assert names_of(admin) == set()
    assert (after.status, after.error_code, after.held) == ("ok", "", [])
    state = EntitlementSyncState.objects.get(user=admin)
    assert state.upstream_identity == upstream_identity("Admin@alpha.example.org")


def test_an_identity_hold_does_not_stop_the_revocations_of_later_runs(admin):
    change_email(admin, "Admin@alpha.example.org")
    sync(admin)

    assert new_run_budget().revoke_budget > 0


def test_an_email_change_that_keeps_some_rights_is_applied(admin, deploycenter_backend):
    deploycenter_backend.set_admin_domains("a.dmin@alpha.example.org", [ALPHA])
    change_email(admin, "a.dmin@alpha.example.org")

    result = sync(admin)

    assert (result.status, result.removed, result.held) == ("ok", [BETA], [])
    assert names_of(admin) == {ALPHA}
    assert EntitlementSyncState.objects.get(user=admin).upstream_identity == (
        upstream_identity("a.dmin@alpha.example.org")
    )


def test_without_an_email_change_losing_everything_is_a_plain_revocation(
    admin, deploycenter_backend
):
    deploycenter_backend.set_admin_domains(ADMIN, [])

    result = sync(admin)

    assert (result.status, result.removed, result.held) == ("ok", [ALPHA, BETA], [])
    assert names_of(admin) == set()
    assert not HeldRevocation.objects.exists()


def test_a_dry_run_shows_the_hold_and_writes_nothing(admin):
    change_email(admin, "Admin@alpha.example.org")

    result = plan_sync(user_id=admin.pk)

    assert (result.status, result.held, result.removed) == ("revocations_held", [ALPHA, BETA], [])
    assert not HeldRevocation.objects.exists()
    assert EntitlementSyncState.objects.get(user=admin).status == "ok"


def test_a_users_first_sync_is_never_held(db, deploycenter_backend, settings):
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
    alpha = MailDomain.objects.create(name=ALPHA)
    user = User.objects.create_user(email="Admin@alpha.example.org", sub="sub-x")
    EntitlementSyncState.objects.create(user=user, forwarded_claims={"siret": ALPHA_SIRET})
    MailDomainAccess.objects.create(
        user=user, maildomain=alpha, source=MailDomainAccess.Source.ENTITLEMENTS
    )

    result = sync(user)

    assert (result.status, result.removed) == ("ok", [ALPHA])


@pytest.mark.parametrize(
    ("recorded", "email", "revoked", "revocable", "held"),
    [
        (upstream_identity("old@example.org"), "new@example.org", 2, 2, True),
        # The same address as upstream is asked: the domain part's case is not a change.
        (upstream_identity("me@example.org"), "me@EXAMPLE.org", 2, 2, False),
        (upstream_identity("old@example.org"), "new@example.org", 1, 2, False),
        (upstream_identity("old@example.org"), "new@example.org", 0, 0, False),
        ("", "new@example.org", 2, 2, False),
    ],
    ids=["all-after-change", "same-identity", "some-kept", "nothing-to-revoke", "first-sync"],
)
def test_only_losing_everything_right_after_a_change_is_held(
    recorded, email, revoked, revocable, held
):
    assert (
        loses_everything_after_identity_change(
            recorded_identity=recorded, email=email, revoked=revoked, revocable=revocable
        )
        is held
    )
