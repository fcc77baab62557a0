"""The release_held_revocations command: release (re-checked) or discard what a run held."""

import io

import pytest
from django.core.management import CommandError, call_command

from core.entitlements import sync_run_batch
from core.entitlements.runs import start_run
from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomainAccess,
    SyncRun,
)

ALPHA = "alpha.example.org"
SYNC = MailDomainAccess.Source.ENTITLEMENTS


def synced_accesses() -> int:
    return MailDomainAccess.objects.filter(source=SYNC).count()


class TestReleaseCommand:
    @pytest.fixture
    def held_run(self, make_synced_admins, scripted_upstream, settings):
        """A run that held the revocations of four users; one of them named alpha again since."""
        settings.ENTITLEMENTS_MAX_REVOKE_MIN = 0
        settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0
        users = make_synced_admins(4)
        scripted_upstream(admins_by_email={user.email: [] for user in users})
        run = start_run(scope=SyncRun.Scope.ALL, trigger="periodic", task_id="")
        sync_run_batch(
            run_id=run.pk,
            user_ids=[str(user.pk) for user in users],
            trigger="periodic",
            task_id="",
        )
        EntitlementSyncState.objects.filter(user=users[0]).update(entitled_domains=[ALPHA])
        return run

    def run(self, *args) -> str:
        out = io.StringIO()
        call_command("release_held_revocations", *args, stdout=out)
        return out.getvalue()

    def test_dry_run_says_what_would_happen_and_writes_nothing(self, held_run):
        out = self.run("--run", str(held_run.pk), "--dry-run")

        assert out.startswith("Dry run: 4 held revocation(s)")
        assert "3 would be revoked, 1 kept" in out
        assert synced_accesses() == 4
        assert HeldRevocation.objects.filter(resolution="pending").count() == 4

    def test_release_revokes_the_still_stale_ones(self, held_run):
        out = self.run("--run", str(held_run.pk))

        assert "3 revoked, 1 kept" in out
        assert synced_accesses() == 1
        assert AccessAuditEntry.objects.filter(trigger="release", action="revoked").count() == 3
        assert self.run("--all") == "No pending held revocation (all runs).\n"

    def test_discard_keeps_the_accesses(self, held_run):
        assert self.run("--all", "--discard", "--dry-run") == (
            "Dry run: 4 held revocation(s) of all runs would be discarded; accesses kept.\n"
        )
        out = self.run("--all", "--discard")

        assert out == "4 held revocation(s) of all runs discarded; accesses kept.\n"
        assert synced_accesses() == 4
        assert set(HeldRevocation.objects.values_list("resolution", flat=True)) == {"discarded"}

    def test_a_target_is_required_and_an_unknown_run_is_a_clear_error(self, transactional_db):
        with pytest.raises(CommandError, match="one of the arguments --run --all is required"):
            self.run()
        with pytest.raises(CommandError, match="No resync run #999999"):
            self.run("--run", "999999")
