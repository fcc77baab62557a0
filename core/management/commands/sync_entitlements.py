"""manage.py sync_entitlements: resync one user, one domain's admins, or every admin."""

import time

from celery import current_app
from django.core.management.base import BaseCommand, CommandError

from core.entitlements import EntitlementsUnavailableError, sync_user_entitlements
from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    MailDomain,
    SyncRun,
    User,
    normalize_email,
)
from core.sync_requests import (
    SyncNotEnqueuedError,
    request_domain_resync,
    request_full_resync,
    request_sync,
    users_due_for_full_resync,
    users_of_domain,
)
from core.validators import normalize_domain_name

TRIGGER = "command"
_POLL_SECONDS = 0.5


class Command(BaseCommand):
    help = (
        "Resync entitlements of one user (--user), of one domain's admins (--domain) or of "
        "every admin (--all) through the workers; --dry-run prints what would change, "
        "in this process, writing nothing."
    )

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--user", metavar="EMAIL", help="the user with this email")
        target.add_argument("--domain", metavar="NAME", help="the admins of this mail domain")
        target.add_argument("--all", action="store_true", help="every admin (a full run)")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="ask the upstream now and print what would change; write nothing",
        )
        parser.add_argument(
            "--wait", action="store_true", help="wait for the sync to end, showing progress"
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=600,
            metavar="SECONDS",
            help="how long --wait waits (default 600)",
        )

    def handle(self, *args, **options):
        dry_run, wait, timeout = options["dry_run"], options["wait"], options["timeout"]
        if dry_run and wait:
            raise CommandError("--dry-run runs here and now: --wait has nothing to wait for")
        target_user = _user_by_email(options["user"]) if options["user"] else None
        maildomain = _domain_by_name(options["domain"]) if options["domain"] else None
        if dry_run:
            if target_user:
                user_ids = [target_user.pk]
            elif maildomain:
                user_ids = users_of_domain(maildomain=maildomain)
            else:
                user_ids = users_due_for_full_resync()
            return self._dry_run(user_ids)
        if target_user:
            return self._sync_user(target_user, wait=wait, timeout=timeout)
        try:
            if maildomain:
                task_id = request_domain_resync(maildomain=maildomain, trigger=TRIGGER)
            else:
                task_id = request_full_resync(trigger=TRIGGER)
        except SyncNotEnqueuedError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"Resync started: task {task_id} (Flower, or the admin's sync runs).")
        if wait:
            self._wait_for_run(task_id, timeout=timeout)

    def _sync_user(self, user: User, *, wait: bool, timeout: float) -> None:
        """Request a sync of the user through the one door, and optionally wait for it."""
        task_id = request_sync(user=user, trigger=TRIGGER)
        state = EntitlementSyncState.objects.get(user=user)
        if state.enqueued_at is None:
            raise CommandError(
                "The task broker cannot be reached. The request is recorded: the sweep "
                "sends it once the broker is back."
            )
        if task_id:
            self.stdout.write(f"Sync of {user.email} queued: task {task_id}.")
        else:
            self.stdout.write(f"A sync of {user.email} was already queued; it serves this one.")
        if wait:
            self._wait_for_user(user, requested_at=state.requested_at, timeout=timeout)

    def _wait_for_user(self, user: User, *, requested_at, timeout: float) -> None:
        """Wait for a sync that started after the request to finish, then say what it did."""
        deadline = time.monotonic() + timeout
        while True:
            state = EntitlementSyncState.objects.get(user=user)
            started, finished = state.started_at, state.finished_at
            if started and finished and started >= requested_at and finished >= started:
                break
            if time.monotonic() > deadline:
                raise CommandError(f"No sync finished within {timeout:g} s; is a worker up?")
            time.sleep(_POLL_SECONDS)
        self.stdout.write(
            f"Status: {state.status}" + (f" ({state.error_code})" if state.error_code else "")
        )
        for entry in AccessAuditEntry.objects.filter(user=user, created_at__gte=started):
            self.stdout.write(f"  {entry.action} {entry.role} of {entry.maildomain_name}")

    def _wait_for_run(self, task_id: str, *, timeout: float) -> None:
        """Wait for the fan-out, then follow the run's counters to the end."""
        deadline = time.monotonic() + timeout
        totals = current_app.AsyncResult(task_id).get(timeout=timeout, propagate=True)
        if totals.get("status") == SyncRun.Status.SKIPPED:
            raise CommandError(
                f"Run #{totals['run_id']} skipped: another run of the same scope is in progress."
            )
        if "run_id" not in totals:
            raise CommandError(f"The resync did not start: {totals.get('reason', totals)}")
        bar = ProgressBar(self.stderr)
        while True:
            run = SyncRun.objects.get(pk=totals["run_id"])
            bar.show(run)
            if run.status != SyncRun.Status.RUNNING:
                break
            if time.monotonic() > deadline:
                bar.close()
                raise CommandError(f"Run #{run.pk} still running after {timeout:g} s.")
            time.sleep(_POLL_SECONDS)
        bar.close()
        self.stdout.write(
            f"Run #{run.pk} {run.status}: {run.users_enqueued} users, {run.users_done} done "
            f"({run.users_changed} changed), {run.users_failed} failed, "
            f"{run.users_skipped} skipped."
        )

    def _dry_run(self, user_ids) -> None:
        """Compute each user's plan in this process and print the changes; write nothing."""
        user_ids = list(user_ids)
        bar = ProgressBar(self.stderr)
        would_change = 0
        for number, user_id in enumerate(user_ids, start=1):
            line = self._dry_run_one(user_id)
            if line:
                would_change += 1
                bar.clear()
                self.stdout.write(line)
            bar.show_count(number, len(user_ids))
        bar.close()
        self.stdout.write(f"Dry run: {len(user_ids)} users checked, {would_change} would change.")

    def _dry_run_one(self, user_id) -> str:
        """One user's line of the dry run, or "" when nothing would change."""
        email = User.objects.values_list("email", flat=True).get(pk=user_id)
        try:
            result = sync_user_entitlements(user_id=user_id, trigger=TRIGGER, dry_run=True)
        except EntitlementsUnavailableError as error:
            return f"{email}: upstream unavailable ({error.error_code}), nothing would change"
        if result.status != EntitlementSyncState.Status.OK:
            return f"{email}: {result.status} ({result.error_code}), nothing would change"
        if not result.changed:
            return ""
        changes = [f"grant {name}" for name in result.added]
        changes += [f"revoke {name}" for name in result.removed]
        return f"{email}: would {', '.join(changes)}"


class ProgressBar:
    """A one-line text progress bar on a terminal stream."""

    width = 30

    def __init__(self, stream):
        self.stream = stream
        self.shown = False

    def show(self, run: SyncRun) -> None:
        """Draw a run's progress: counted users over enqueued users."""
        counted = run.users_done + run.users_failed + run.users_skipped
        self._draw(
            counted,
            run.users_enqueued,
            f"changed {run.users_changed} · failed {run.users_failed} · "
            f"skipped {run.users_skipped}",
        )

    def show_count(self, done: int, total: int) -> None:
        """Draw a plain count."""
        self._draw(done, total, "")

    def clear(self) -> None:
        """Erase the bar so a normal line can be printed."""
        if self.shown:
            self.stream.write("\r\033[K", ending="")

    def close(self) -> None:
        """End the bar's line."""
        if self.shown:
            self.stream.write("")
            self.shown = False

    def _draw(self, done: int, total: int, detail: str) -> None:
        filled = self.width * done // total if total else 0
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total or '?'} users {detail}", ending="")
        self.stream.flush()
        self.shown = True


def _user_by_email(email: str) -> User:
    """The user with this email, or a CommandError."""
    try:
        return User.objects.get(email=normalize_email(email))
    except User.DoesNotExist:
        raise CommandError(f"No user with email {email!r}.") from None


def _domain_by_name(name: str) -> MailDomain:
    """The mail domain with this name, or a CommandError."""
    try:
        return MailDomain.objects.get(name=normalize_domain_name(name.strip()))
    except MailDomain.DoesNotExist:
        raise CommandError(f"No mail domain named {name!r}.") from None
