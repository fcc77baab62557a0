"""manage.py sync_entitlements: resync one user, one domain's admins, or every admin.

Exit codes: 0 done, 1 an error (unknown user, broker down...), 3 --wait timed out, 4 the run
held revocations that an operator must release or discard.
"""

import argparse
import time

from celery import current_app
from celery.exceptions import TimeoutError as CeleryTimeoutError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.entitlements import describe, plan_sync, request_resync, request_sync

# The receipt's type, for annotations (tests/test_layers.py lists this reader of the package).
from core.entitlements.receipts import SyncReceipt
from core.models import AccessAuditEntry, EntitlementSyncState, MailDomain, SyncRun, Trigger, User
from core.selectors import users_due_for_full_resync, users_of_domain
from core.validators import normalize_domain_name, normalize_email

EXIT_TIMEOUT = 3
EXIT_HELD_REVOCATIONS = 4
_POLL_SECONDS = 0.5


def _positive_seconds(value: str) -> float:
    """argparse type of --timeout: a number of seconds above zero."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be above zero, not {value}")
    return seconds


def _count(number: int, noun: str) -> str:
    """'1 user', '2 users'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


class Command(BaseCommand):
    help = (
        "Resync entitlements of one user (--user), of one domain's admins (--domain) or of "
        "every admin (--all) through the workers; --dry-run prints what would change, "
        "in this process, writing nothing. Exit codes: 3 when --wait times out, 4 when the "
        "run held revocations for an operator."
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
            type=_positive_seconds,
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
        receipt = request_resync(maildomain=maildomain, trigger=Trigger.COMMAND)
        self._tell(receipt)
        if wait:
            self._wait_for_run(receipt.task_id, timeout=timeout)

    def _sync_user(self, user: User, *, wait: bool, timeout: float) -> None:
        """Request a sync of the user through the one door, and optionally wait for it."""
        self._tell(request_sync(user=user, trigger=Trigger.COMMAND))
        if wait:
            requested_at = EntitlementSyncState.objects.get(user=user).requested_at
            self._wait_for_user(user, requested_at=requested_at, timeout=timeout)

    def _tell(self, receipt: SyncReceipt) -> None:
        """Say what became of the request; a request that was not sent is an error (exit 1)."""
        [notice] = describe(receipt)
        if notice.level == "error":
            raise CommandError(notice.text)
        self.stdout.write(notice.text)

    def _wait_for_user(self, user: User, *, requested_at, timeout: float) -> None:
        """Wait for a sync that started after the request to finish, then say what it did."""

        state = _poll(
            lambda: EntitlementSyncState.objects.get(user=user),
            until=lambda state: state.is_served(requested_at) and not state.is_running(),
            deadline=time.monotonic() + timeout,
            timeout_message=f"No sync of {user.email} finished within {timeout:g} s; is a "
            "worker serving the interactive queue? The request stays recorded.",
        )
        self.stdout.write(
            f"Status: {state.status}" + (f" ({state.error_code})" if state.error_code else "")
        )
        for entry in AccessAuditEntry.objects.filter(user=user, created_at__gte=state.started_at):
            self.stdout.write(f"  {entry.action} {entry.role} of {entry.maildomain_name}")

    def _wait_for_run(self, task_id: str, *, timeout: float) -> None:
        """Wait for the fan-out, then follow the run's counters to the end."""
        deadline = time.monotonic() + timeout
        try:
            started = current_app.AsyncResult(task_id).get(timeout=timeout, propagate=True)
        except CeleryTimeoutError:
            raise CommandError(
                f"The resync did not start within {timeout:g} s; is a worker serving the "
                "bulk queue?",
                returncode=EXIT_TIMEOUT,
            ) from None
        if started.get("run_status") == SyncRun.Status.SKIPPED:
            raise CommandError(
                f"Run #{started.get('run_id')} skipped: another run of the same scope is in "
                "progress."
                if "run_id" in started
                else f"The resync did not start: {started.get('reason', started)}"
            )
        run = self._follow(started["run_id"], deadline=deadline, timeout=timeout)
        self.stdout.write(
            f"Run #{run.pk} {run.status}: {_count(run.users_enqueued, 'user')}, "
            f"{run.users_done} done ({run.users_changed} changed), {run.users_failed} failed, "
            f"{run.users_skipped} skipped."
        )
        held = run.held_revocations.filter(resolution="pending").count()
        if run.revocations_held:
            raise CommandError(
                f"Run #{run.pk} reached its revocation budget and held "
                f"{_count(held, 'revocation')} for an operator: review them in the admin "
                f"(Held revocations), then run `manage.py release_held_revocations --run "
                f"{run.pk}` (or --discard).",
                returncode=EXIT_HELD_REVOCATIONS,
            )

    def _follow(self, run_id: int, *, deadline: float, timeout: float) -> SyncRun:
        """Show a run's progress until it ends; its final row."""
        with tqdm(file=self.stderr._out, unit=" users", dynamic_ncols=True) as bar:

            def show(run: SyncRun) -> bool:
                bar.total = run.users_enqueued or None
                bar.n = run.users_done + run.users_failed + run.users_skipped
                bar.set_postfix(
                    changed=run.users_changed, failed=run.users_failed, skipped=run.users_skipped
                )
                return run.status != SyncRun.Status.RUNNING

            return _poll(
                lambda: SyncRun.objects.get(pk=run_id),
                until=show,
                deadline=deadline,
                timeout_message=f"Run #{run_id} still running after {timeout:g} s; it goes on "
                "in the workers (the admin's sync runs show it).",
            )

    def _dry_run(self, user_ids) -> None:
        """Compute each user's plan in this process and print the changes; write nothing."""
        user_ids = list(user_ids)
        would_change = 0
        for user_id in tqdm(user_ids, file=self.stderr._out, unit=" users", leave=False):
            line, changes = self._dry_run_one(user_id)
            would_change += changes
            if line:
                tqdm.write(line, file=self.stdout._out)
        self.stdout.write(
            f"Dry run: {_count(len(user_ids), 'user')} checked, {would_change} would change."
        )

    def _dry_run_one(self, user_id) -> tuple[str, bool]:
        """One user's line of the dry run ("" when there is nothing to say), and whether their
        accesses would change."""
        email = User.objects.values_list("email", flat=True).get(pk=user_id)
        result = plan_sync(user_id=user_id)
        if result.status == EntitlementSyncState.Status.UNAVAILABLE:
            return (
                f"{email}: upstream unavailable ({result.error_code}), nothing would change",
                False,
            )
        if not result.changed:
            if result.status == EntitlementSyncState.Status.OK:
                return "", False
            return f"{email}: {result.status} ({result.error_code}), nothing would change", False
        changes = [f"grant {name}" for name in result.added]
        changes += [f"revoke {name}" for name in result.removed]
        return f"{email}: would {', '.join(changes)}", True


def _poll(read, *, until, deadline: float, timeout_message: str):
    """Read a row every half second until `until(row)`; a CommandError (exit 3) past deadline."""
    while True:
        row = read()
        if until(row):
            return row
        if time.monotonic() > deadline:
            raise CommandError(timeout_message, returncode=EXIT_TIMEOUT)
        time.sleep(_POLL_SECONDS)


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
