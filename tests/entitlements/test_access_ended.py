"""The ended-subscription rule on PostgreSQL and Redis, against the local DeployCenter over HTTP:
`not_activated` stops provisioning grants from the old list at once, and once it has lasted the
confirmation window a run revokes the sync-made accesses through its revocation budget."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from core.entitlements import grant_accesses_for_new_domains, sync_run_batch, sync_user_entitlements
from core.models import (
    EntitlementSyncState,
    HeldRevocation,
    MailDomain,
    MailDomainAccess,
    SyncRun,
    User,
)
from tests.deploycenter_stub import ALPHA_SIRET

ALPHA, BETA, GAMMA = "alpha.example.org", "beta.example.org", "gamma.example.org"
ADMIN = "admin@alpha.example.org"
SYNC = MailDomainAccess.Source.ENTITLEMENTS
DAY = 24 * 3600


@pytest.fixture
def admin(db, deploycenter_backend, settings):
    """The stub's admin after a sync: alpha and beta granted, gamma named but not provisioned."""
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 0
    settings.ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS = DAY
    for name in (ALPHA, BETA):
        MailDomain.objects.create(name=name)
    deploycenter_backend.set_admin_domains(ADMIN, [ALPHA, BETA, GAMMA])
    user = User.objects.create_user(email=ADMIN, sub="sub-admin")
    EntitlementSyncState.objects.create(user=user, forwarded_claims={"siret": ALPHA_SIRET})
    sync_user_entitlements(user_id=user.pk, trigger="login")
    assert names_of(user) == {ALPHA, BETA}
    return user


def names_of(user) -> set[str]:
    return set(
        MailDomainAccess.objects.filter(user=user).values_list("maildomain__name", flat=True)
    )


def state_of(user) -> EntitlementSyncState:
    return EntitlementSyncState.objects.get(user=user)


def ended_since(user, seconds: int) -> None:
    """As if DeployCenter had answered not_activated since `seconds` ago."""
    EntitlementSyncState.objects.filter(user=user).update(
        access_ended_since=timezone.now() - timedelta(seconds=seconds)
    )


def run_batch(users, *, budget: int = 100) -> tuple[SyncRun, list]:
    run = SyncRun.objects.create(trigger="periodic", revoke_budget=budget, revocable_accesses=9)
    outcome = sync_run_batch(
        run_id=run.pk,
        user_ids=[str(user.pk) for user in users],
        trigger="periodic",
        task_id=f"batch-{run.pk}",
    )
    run.refresh_from_db()
    return run, outcome


def test_the_first_not_activated_answer_stops_grants_from_the_old_list(admin, deploycenter_backend):
    deploycenter_backend.set_subscribed(ALPHA_SIRET, False)

    result = sync_user_entitlements(user_id=admin.pk, trigger="login")
    gamma = MailDomain.objects.create(name=GAMMA)
    granted = grant_accesses_for_new_domains(maildomains=[gamma])

    assert (result.status, result.error_code, result.removed) == (
        "access_ended",
        "not_activated",
        [],
    )
    assert granted == 0
    assert names_of(admin) == {ALPHA, BETA}
    state = state_of(admin)
    assert state.entitled_domains == []
    assert state.access_ended_since is not None


def test_the_date_the_access_ended_is_kept_by_later_answers(admin, deploycenter_backend):
    deploycenter_backend.set_subscribed(ALPHA_SIRET, False)
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    ended_since(admin, 3600)
    first = state_of(admin).access_ended_since

    sync_user_entitlements(user_id=admin.pk, trigger="login")

    assert state_of(admin).access_ended_since == first


def test_a_per_user_sync_never_revokes_an_ended_access(admin, deploycenter_backend):
    deploycenter_backend.set_subscribed(ALPHA_SIRET, False)
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    ended_since(admin, 2 * DAY)

    result = sync_user_entitlements(user_id=admin.pk, trigger="admin")

    assert (result.status, result.removed, result.held) == ("access_ended", [], [])
    assert names_of(admin) == {ALPHA, BETA}


def test_a_run_inside_the_confirmation_window_revokes_nothing(admin, deploycenter_backend):
    deploycenter_backend.set_subscribed(ALPHA_SIRET, False)
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    ended_since(admin, DAY - 60)

    run, outcome = run_batch([admin])

    assert outcome.as_dict()["done"] == 1
    assert names_of(admin) == {ALPHA, BETA}
    assert run.accesses_revoked == 0


def test_a_run_after_the_confirmation_window_revokes_within_its_budget(admin, deploycenter_backend):
    manual = MailDomain.objects.create(name="manual.example.org")
    MailDomainAccess.objects.create(user=admin, maildomain=manual)
    deploycenter_backend.set_subscribed(ALPHA_SIRET, False)
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    ended_since(admin, DAY + 60)

    run, outcome = run_batch([admin])

    assert outcome.as_dict()["changed"] == 1
    # Only what the sync made goes; a hand-made access stays.
    assert names_of(admin) == {"manual.example.org"}
    assert run.accesses_revoked == 2
    state = state_of(admin)
    assert (state.status, state.error_code) == ("access_ended", "not_activated")


def test_a_run_out_of_budget_holds_the_ended_accesses(admin, deploycenter_backend):
    deploycenter_backend.set_subscribed(ALPHA_SIRET, False)
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    ended_since(admin, DAY + 60)

    run, _outcome = run_batch([admin], budget=0)

    assert names_of(admin) == {ALPHA, BETA}
    assert run.budget_reached
    assert sorted(
        HeldRevocation.objects.filter(run=run).values_list("maildomain_name", "reason")
    ) == [(ALPHA, "run_budget"), (BETA, "run_budget")]


def test_a_window_of_zero_never_revokes(admin, deploycenter_backend, settings):
    settings.ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS = 0
    deploycenter_backend.set_subscribed(ALPHA_SIRET, False)
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    ended_since(admin, 30 * DAY)

    run_batch([admin])

    assert names_of(admin) == {ALPHA, BETA}
    # Grants from the old list stop all the same.
    assert state_of(admin).entitled_domains == []


def test_a_renewed_subscription_clears_the_end_and_restores_the_list(admin, deploycenter_backend):
    deploycenter_backend.set_subscribed(ALPHA_SIRET, False)
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    deploycenter_backend.set_subscribed(ALPHA_SIRET, True)

    result = sync_user_entitlements(user_id=admin.pk, trigger="login")

    assert result.status == "ok"
    state = state_of(admin)
    assert state.access_ended_since is None
    assert state.entitled_domains == [ALPHA, BETA, GAMMA]


def test_an_unknown_siret_stays_no_information(admin):
    EntitlementSyncState.objects.filter(user=admin).update(
        forwarded_claims={"siret": "00000000099999"}
    )

    result = sync_user_entitlements(user_id=admin.pk, trigger="login")
    run_batch([admin])

    assert (result.status, result.error_code) == ("no_information", "no_organization")
    state = state_of(admin)
    assert state.access_ended_since is None
    assert state.entitled_domains == [ALPHA, BETA, GAMMA]
    assert names_of(admin) == {ALPHA, BETA}


def test_the_admin_shows_since_when_the_access_ended(admin, deploycenter_backend, client):
    deploycenter_backend.set_subscribed(ALPHA_SIRET, False)
    sync_user_entitlements(user_id=admin.pk, trigger="login")
    since = state_of(admin).access_ended_since
    client.force_login(User.objects.create_superuser(email="ops@example.org", password="x"))

    page = client.get(reverse("admin:core_user_change", args=[admin.pk])).content.decode()
    states = client.get(reverse("admin:core_entitlementsyncstate_changelist")).content.decode()

    assert "Access ended since" in page
    assert "Access ended upstream" in page
    assert str(since.year) in page.split("Access ended since")[1][:200]
    assert "access ended since" in states.lower()
