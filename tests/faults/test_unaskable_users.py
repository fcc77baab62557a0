"""Users who cannot be asked are skipped, not failed, and users who never had an entitlement
leave the full runs, while everyone whose rights may change stays covered.

A real worker subprocess runs full runs against the DeployCenter stub over HTTP. A local
superuser has no `siret` claim: DeployCenter would answer 400, so the backend does not ask.
"""

import uuid

import pytest
from django.utils import timezone

from core.entitlements.sync_requests import request_resync
from core.models import EntitlementSyncState, MailDomainAccess, SyncRun, User
from core.selectors import users_due_for_full_resync
from tests.faults.conftest import ALPHA, BETA, synced_domains, upstream_calls_by_email
from tests.support import wait_until


def full_run() -> SyncRun:
    started = timezone.now()
    request_resync(trigger="periodic")
    return wait_until(
        lambda: SyncRun.objects.filter(started_at__gte=started, status="done").first(),
        timeout=60,
        message="the full run",
    )


@pytest.fixture
def population(make_admins, domains):
    """An admin DeployCenter answers for, and users in every other situation a run meets."""
    [admin] = make_admins(1, upstream_domains=(ALPHA, BETA))
    superuser = User.objects.create_superuser(email="root@example.org", password="x")
    # Lost their claim but holds a right the sync gave: must stay covered, and keep it.
    [claimless_holder] = make_admins(1, held=(ALPHA,), prefix="claimless")
    EntitlementSyncState.objects.filter(user=claimless_holder).update(forwarded_claims={})
    # Told "no information" last time (an organisation without a subscription), nothing held.
    [no_information] = make_admins(1, upstream_domains=(), prefix="unsubscribed")
    EntitlementSyncState.objects.filter(user=no_information).update(
        status="no_information", error_code="not_activated"
    )
    # Last sync failed on an outage: asked again.
    [unavailable] = make_admins(1, upstream_domains=(ALPHA,), prefix="outage")
    EntitlementSyncState.objects.filter(user=unavailable).update(
        status="unavailable", error_code="http_503"
    )
    return {
        "admin": admin,
        "superuser": superuser,
        "claimless_holder": claimless_holder,
        "no_information": no_information,
        "unavailable": unavailable,
    }


def test_users_without_the_claim_are_skipped_and_the_never_entitled_left_out(
    start_worker, population, upstream
):
    start_worker()

    first = full_run()

    # Due: the admin and the superuser (never synced), the claimless holder (holds a right),
    # the user whose last sync failed. Not the user last told "no information", holding none.
    assert first.users_enqueued == 4
    assert (first.users_done, first.users_failed, first.users_skipped) == (2, 0, 2)
    for name in ("superuser", "claimless_holder"):
        state = EntitlementSyncState.objects.get(user=population[name])
        assert (state.status, state.error_code) == ("skipped", "missing_claim"), name
    assert synced_domains(population["claimless_holder"]) == {ALPHA}, "skipping never revokes"
    assert synced_domains(population["admin"]) == {ALPHA, BETA}
    calls = upstream_calls_by_email(upstream)
    assert population["superuser"].email not in calls
    assert population["claimless_holder"].email not in calls
    assert population["no_information"].email not in calls

    second = full_run()

    # Left out now: the superuser too (skipped, never entitled). Covered: those holding
    # sync-made accesses (the admin, the claimless holder, the user whose outage is over).
    assert second.users_enqueued == 3
    assert (second.users_done, second.users_failed, second.users_skipped) == (2, 0, 1)
    assert MailDomainAccess.objects.filter(user=population["superuser"]).count() == 0


def test_the_full_run_covers_whoever_may_change_and_leaves_the_settled_out(domains):
    def user_with(state=None, held=False):
        token = uuid.uuid4().hex[:12]
        user = User.objects.create_user(email=f"user-{token}@example.org", sub=token)
        if state is not None:
            EntitlementSyncState.objects.create(user=user, **state)
        if held:
            MailDomainAccess.objects.create(
                user=user, maildomain=domains[ALPHA], source=MailDomainAccess.Source.ENTITLEMENTS
            )
        return user

    skipped = {"status": "skipped", "error_code": "missing_claim"}
    covered = {
        user_with(),  # never synced
        user_with({"status": "never"}),
        user_with({"status": "unavailable", "error_code": "http_503"}),
        user_with({"status": "error", "error_code": "http_401"}),
        user_with({"status": "invalid", "error_code": "not_json"}),
        user_with(skipped, held=True),
        user_with({"status": "no_information"}, held=True),
        user_with({"status": "no_information", "entitled_domains": [BETA]}),
        user_with({"status": "ok", "entitled_domains": [BETA]}),
    }
    left_out = {
        user_with(skipped),
        user_with({"status": "no_information", "error_code": "not_activated"}),
        user_with({"status": "ok"}),
    }

    due = set(User.objects.filter(pk__in=users_due_for_full_resync()))
    assert due >= covered
    assert not due & left_out
