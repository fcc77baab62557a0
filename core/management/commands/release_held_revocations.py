"""manage.py release_held_revocations: apply or discard the revocations a resync run held."""

from django.core.management.base import BaseCommand, CommandError

from core.entitlements import discard_held_revocations, release_held_revocations
from core.models import HeldRevocation, SyncRun
from core.selectors import pending_held_revocations


class Command(BaseCommand):
    help = (
        "Release the revocations a resync run held at its revocation budget (--run ID, or "
        "--all pending): each is re-checked against the user's last answer and revoked only "
        "if that answer still does not name the domain. --discard keeps the accesses instead; "
        "--dry-run says what would happen and writes nothing."
    )

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--run", type=int, metavar="ID", help="the held revocations of run ID")
        target.add_argument("--all", action="store_true", help="every pending held revocation")
        parser.add_argument(
            "--discard", action="store_true", help="keep the accesses: mark the rows discarded"
        )
        parser.add_argument("--dry-run", action="store_true", help="count only; write nothing")

    def handle(self, *args, **options):
        held = self._held(run_id=options["run"])
        pending = held.filter(resolution=HeldRevocation.Resolution.PENDING).count()
        scope = f"run #{options['run']}" if options["run"] else "all runs"
        if not pending:
            self.stdout.write(f"No pending held revocation ({scope}).")
            return
        dry = "Dry run: " if options["dry_run"] else ""
        if options["discard"]:
            discarded = pending if options["dry_run"] else discard_held_revocations(held=held)
            verb = "would be discarded" if options["dry_run"] else "discarded"
            self.stdout.write(
                f"{dry}{discarded} held revocation(s) of {scope} {verb}; accesses kept."
            )
            return
        report = release_held_revocations(held=held, dry_run=options["dry_run"])
        revoked = "would be revoked" if options["dry_run"] else "revoked"
        self.stdout.write(
            f"{dry}{pending} held revocation(s) of {scope}: {report.revoked} {revoked}, "
            f"{report.kept} kept (the last answer names the domain again), "
            f"{report.gone} already gone."
        )

    def _held(self, *, run_id: int | None):
        """The held revocations the command covers."""
        if run_id is None:
            return pending_held_revocations()
        if not SyncRun.objects.filter(pk=run_id).exists():
            raise CommandError(f"No resync run #{run_id}.")
        return HeldRevocation.objects.filter(run_id=run_id)
