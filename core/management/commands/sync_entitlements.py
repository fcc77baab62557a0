"""manage.py sync_entitlements: resync one user, one domain's admins, or every admin.

Exit codes: 0 done, 1 an error (unknown user, broker down, the run skipped...), 2 a bad
option (an empty --user or --domain), 3 --wait timed out, 4 the run held revocations that an
operator must release or discard, 5 the run failed (it says why, and who was not asked).
"""

import argparse
import time
from typing import TextIO, cast

from celery import current_app
from celery.exceptions import TimeoutError as CeleryTimeoutError
from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from tqdm import tqdm

from core.entitlements import (
    describe,
    plan_sync,
    request_resync,
    request_sync,
)

# The receipt's type, for annotations (tests/test_layers.py lists this reader of the package).
from core.entitlements.receipts import SyncReceipt
from core.entitlements.revocation_budget import new_run_budget
from core.models import AccessAuditEntry, EntitlementSyncState, MailDomain, SyncRun, Trigger, User
from core.selectors import users_due_for_full_resync, users_of_domain
from core.validators import normalize_domain_name, normalize_email

EXIT_TIMEOUT = 3
EXIT_HELD_REVOCATIONS = 4
EXIT_RUN_FAILED = 5
# Without --wait: how long to look for the run's row, to say whether it started or was skipped.
_RUN_START_SECONDS = 10
_POLL_SECONDS = 0.5


def _raw(stream: OutputWrapper) -> TextIO:
    """The stream under a command's output wrapper, which would end each of tqdm's redraws."""
    # Private to Django, and its hints type every unknown attribute of the wrapper a callable.
    return cast(TextIO, stream._out)


def _positive_seconds(value: str) -> float:
    """argparse type of --timeout: a number of seconds above zero."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be above zero, not {value}")
    return seconds


def _named(value: str) -> str:
    """argparse type of --user and --domain: a value that names something, not blank text
    (`--user "$EMAIL"` with EMAIL unset must not become a run over everyone)."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "must not be empty (an unset variable?); use --all for every admin"
        )
    return value


def _count(number: int, noun: str) -> str:
    """'1 user', '2 users'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


class Command(BaseCommand):
    help = (
        "Resync entitlements of one user (--user), of one domain's admins (--domain) or of "
        "every admin (--all) through the workers; --dry-run prints what would change, "
        "in this process, writing nothing. Exit codes: 3 when --wait times out, 4 when the "
        "run held revocations for an operator, 5 when the run failed."
    )

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--user", type=_named, metavar="EMAIL", help="the user with this email")
        target.add_argument(
            "--domain", type=_named, metavar="NAME", help="the admins of this mail domain"
        )
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
        target_user = _user_by_email(options["user"]) if options["user"] is not None else None
        maildomain = _domain_by_name(options["domain"]) if options["domain"] is not None else None
        if dry_run:
            if target_user:
                return self._dry_run([target_user.pk], run_budget=None)
            if maildomain:
                user_ids = users_of_domain(maildomain=maildomain)
            else:
                user_ids = users_due_for_full_resync()
            # Planned as the run would: ended subscriptions revoked, its budget holding the rest.
            return self._dry_run(user_ids, run_budget=new_run_budget().revoke_budget)
        if target_user:
            return self._sync_user(target_user, wait=wait, timeout=timeout)
        receipt = request_resync(maildomain=maildomain, trigger=Trigger.COMMAND)
        self._tell(receipt)
        assert receipt.task_id is not None, "_tell stops at a request that was not sent"
        if wait:
            self._wait_for_run(receipt.task_id, timeout=timeout)
        else:
            self._tell_run_start(receipt.task_id)

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

    def _tell_run_start(self, task_id: str) -> None:
        """Say whether the run started or was skipped (exit 1), once a worker took it."""
        run = _poll(
            lambda: SyncRun.objects.filter(task_id=task_id).first(),
            until=lambda run: run is not None,
            deadline=time.monotonic() + _RUN_START_SECONDS,
            timeout_message=None,
        )
        if run is None:
            self.stdout.write(
                f"No worker took it within {_RUN_START_SECONDS} s (is a worker serving the bulk "
                "queue?): its run shows in the admin's sync runs once one does."
            )
        elif run.status == SyncRun.Status.SKIPPED:
            raise CommandError(_skipped_text(run))
        else:
            self.stdout.write(f"Run #{run.pk} {run.status}; the admin's sync runs follow it.")

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
                _skipped_text(SyncRun.objects.get(pk=started["run_id"]))
                if "run_id" in started
                else f"The resync did not start: {started.get('reason', started)}"
            )
        run = self._follow(started["run_id"], deadline=deadline, timeout=timeout)
        if run.status == SyncRun.Status.FAILED:
            # A run stops before its batches have all reported: its counts come once they did.
            run = _poll(
                lambda: SyncRun.objects.get(pk=run.pk),
                until=lambda run: _counted_users(run) >= run.users_enqueued,
                deadline=min(deadline, time.monotonic() + _RUN_START_SECONDS),
                timeout_message=None,
            )
        asked = run.users_done + run.users_failed
        self.stdout.write(
            f"Run #{run.pk} {run.status}"
            + (f" ({run.error_code})" if run.error_code else "")
            + f": {_count(run.users_enqueued, 'user')}, {asked} asked: {run.users_done} done "
            f"({run.users_changed} changed), {run.users_failed} failed; "
            f"{run.users_skipped} skipped, {run.users_not_run} not run."
        )
        if run.status == SyncRun.Status.FAILED:
            raise CommandError(
                f"Run #{run.pk} failed: {run.why_it_ended()}", returncode=EXIT_RUN_FAILED
            )
        held = run.held_revocations.filter(resolution="pending").count()
        if run.budget_reached:
            raise CommandError(
                f"Run #{run.pk} reached its revocation budget and held "
                f"{_count(held, 'revocation')} for an operator: review them in the admin "
                f"(Held revocations), then run `manage.py release_held_revocations --run "
                f"{run.pk}` (or --discard).",
                returncode=EXIT_HELD_REVOCATIONS,
            )

    def _follow(self, run_id: int, *, deadline: float, timeout: float) -> SyncRun:
        """Show a run's progress until it ends; its final row."""
        with tqdm(file=_raw(self.stderr), unit=" users", dynamic_ncols=True) as bar:

            def show(run: SyncRun) -> bool:
                bar.total = run.users_enqueued or None
                bar.n = _counted_users(run)
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

    def _dry_run(self, user_ids, *, run_budget: int | None) -> None:
        """Compute each user's plan in this process and print what would change or be held;
        write nothing. With a `run_budget` (a run's dry run) users are planned as the run
        plans them, and revocations past the budget are held, as the run would hold them."""
        user_ids = list(user_ids)
        forecast = _Forecast(run_budget=run_budget)
        # A bar for many users on a terminal only: none for one user, nor in a log or a pipe.
        bar = tqdm(
            user_ids,
            file=_raw(self.stderr),
            unit=" users",
            leave=False,
            disable=True if len(user_ids) < 2 else None,
        )
        for user_id in bar:
            email = User.objects.values_list("email", flat=True).get(pk=user_id)
            line = forecast.line(email, plan_sync(user_id=user_id, in_run=run_budget is not None))
            if line:
                tqdm.write(line, file=_raw(self.stdout))
        self.stdout.write(forecast.summary(len(user_ids)))


class _Forecast:
    """The dry run's tally: what each user's sync would do, the run's budget applied in turn
    (once a user's revocations do not fit, every later revocation of the run is held)."""

    def __init__(self, *, run_budget: int | None):
        self.run_budget = run_budget
        self.would_change = self.revoked = self.held_by_budget = self.held_by_identity = 0
        self.budget_reached = False

    def line(self, email: str, result) -> str:
        """The user's line ("" when there is nothing to say)."""
        if result.status == EntitlementSyncState.Status.UNAVAILABLE:
            return f"{email}: upstream unavailable ({result.error_code}), nothing would change"
        removed = list(result.removed)
        result_held = []
        if removed and self.run_budget is not None:
            if self.budget_reached or self.revoked + len(removed) > self.run_budget:
                self.budget_reached = True
                self.held_by_budget += len(removed)
                result_held, removed = [(name, "run budget") for name in removed], []
            else:
                self.revoked += len(removed)
        if result.held:
            self.held_by_identity += len(result.held)
            result_held += [(name, result.error_code) for name in result.held]
        changes = [f"grant {name}" for name in result.added]
        ended = " (subscription ended)" if result.status == "access_ended" else ""
        changes += [f"revoke {name}{ended}" for name in removed]
        held = [f"hold the revocation of {name} ({why})" for name, why in result_held]
        if changes:
            self.would_change += 1
        if not (changes or held):
            if result.status == EntitlementSyncState.Status.OK:
                return ""
            return f"{email}: {result.status} ({result.error_code}), nothing would change"
        return f"{email}: would {', '.join(changes + held)}"

    def summary(self, users: int) -> str:
        text = f"Dry run: {_count(users, 'user')} checked, {self.would_change} would change."
        if self.run_budget is not None:
            text += (
                f" The run would revoke {self.revoked} (budget {self.run_budget}), hold "
                f"{self.held_by_budget} at its budget and {self.held_by_identity} by the "
                "identity rule."
            )
        elif self.held_by_identity:
            text += f" {self.held_by_identity} revocations held by the identity rule."
        return text


def _poll(read, *, until, deadline: float, timeout_message: str | None):
    """Read a row every half second until `until(row)`; past deadline a CommandError (exit 3),
    or the last row read when there is no `timeout_message`."""
    while True:
        row = read()
        if until(row):
            return row
        if time.monotonic() > deadline:
            if timeout_message is None:
                return row
            raise CommandError(timeout_message, returncode=EXIT_TIMEOUT)
        time.sleep(_POLL_SECONDS)


def _counted_users(run: SyncRun) -> int:
    """The run's users whose batch reported them, asked or not."""
    return run.users_done + run.users_failed + run.users_skipped + run.users_not_run


def _skipped_text(run: SyncRun) -> str:
    """Why a run was skipped: the run of its scope in progress, when it started."""
    running = (
        SyncRun.objects.filter(
            scope=run.scope, maildomain_name=run.maildomain_name, status=SyncRun.Status.RUNNING
        )
        .exclude(pk=run.pk)
        .first()
    )
    if running is None:
        return f"Run #{run.pk} skipped: another run of the same scope was starting."
    return (
        f"Run #{run.pk} skipped: run #{running.pk} of the same scope is in progress (started "
        f"{running.started_at:%Y-%m-%d %H:%M:%S} UTC); nothing was started."
    )


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
