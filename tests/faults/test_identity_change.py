"""End to end through the OIDC login flow, a real worker subprocess and the local DeployCenter
over HTTP (which matches e-mails exactly): a provider that changes the e-mail it sends never
silently empties a user's rights."""

import json

from django.test import Client
from django.urls import reverse
from django_celery_results.models import TaskResult

from core.models import EntitlementSyncState, HeldRevocation, MailDomain, User
from tests.deploycenter_stub import ALPHA_SIRET
from tests.faults.conftest import ALPHA, BETA, synced_domains
from tests.support import wait_until
from tests.support.oidc_provider import FakeProvider

ADMIN = "admin@alpha.example.org"


def log_in(provider: FakeProvider, email: str) -> None:
    browser = provider.login({"sub": "sub-admin", "email": email, "siret": ALPHA_SIRET})
    assert "_auth_user_id" in browser.session


def state_of(user) -> EntitlementSyncState:
    return EntitlementSyncState.objects.get(user=user)


def sync_after(user, finished_at):
    """Wait for a sync of the user that finished after `finished_at`; return its state."""
    return wait_until(
        lambda: (
            (state := state_of(user)).finished_at
            and (finished_at is None or state.finished_at > finished_at)
            and state.finished_at >= state.requested_at
            and state
        ),
        timeout=30,
        message="the login's sync",
    )


def test_a_changed_email_at_login_never_silently_empties_the_rights(
    start_worker, upstream, settings
):
    # Each login's request gets its own task (nothing collapses into an ended one).
    settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS = 0
    for name in (ALPHA, BETA):
        MailDomain.objects.create(name=name)
    worker = start_worker(concurrency=1)
    provider = FakeProvider(settings)

    log_in(provider, ADMIN)
    user = User.objects.get(sub="sub-admin")
    first = sync_after(user, None)
    assert (first.status, synced_domains(user)) == ("ok", {ALPHA, BETA})

    # The provider changes only the case of the local part: the stored e-mail is kept, so
    # DeployCenter is asked with the form it knows.
    log_in(provider, "Admin@alpha.example.org")
    second = sync_after(user, first.finished_at)
    user.refresh_from_db()
    assert user.email == ADMIN
    assert upstream.requests[-1]["query"]["account_email"] == [ADMIN]
    assert (second.status, synced_domains(user)) == ("ok", {ALPHA, BETA})

    # A real change DeployCenter does not know: its authoritative empty list is held.
    log_in(provider, "a.dmin@alpha.example.org")
    third = sync_after(user, second.finished_at)
    assert upstream.requests[-1]["query"]["account_email"] == ["a.dmin@alpha.example.org"]
    assert (third.status, third.error_code) == ("revocations_held", "identity_changed")
    assert synced_domains(user) == {ALPHA, BETA}
    held = HeldRevocation.objects.filter(user=user, resolution="pending")
    assert sorted(held.values_list("maildomain_name", "reason")) == [
        (ALPHA, "identity_changed"),
        (BETA, "identity_changed"),
    ]
    task = wait_until(
        lambda: TaskResult.objects.filter(
            task_name="entitlements.sync_user", task_id=third.last_task_id
        ).first(),
        message="the sync's task result",
    )
    result = json.loads(task.result)
    assert (result["status"], result["error_code"], result["held"]) == (
        "revocations_held",
        "identity_changed",
        [ALPHA, BETA],
    )
    log = wait_until(
        lambda: "e-mail sent upstream changed" in worker.log() and worker.log(),
        message="the worker's warning",
    )
    [warning] = [line for line in log.splitlines() if "e-mail sent upstream changed" in line]
    assert "WARNING" in warning
    assert str(user.pk) in warning
    assert "dmin@alpha" not in log

    # The admin says so on the user's page and in the held revocations list.
    operator = User.objects.create_superuser(email="ops@example.org", password="x")
    browser = Client()
    browser.force_login(operator)
    page = browser.get(reverse("admin:core_user_change", args=[user.pk])).content.decode()
    assert "Revocations held for an operator" in page
    assert "All accesses lost right after the e-mail changed" in page
    listing = browser.get(reverse("admin:core_heldrevocation_changelist")).content.decode()
    assert listing.count("All accesses lost right after the e-mail changed") >= 2
