"""One truth about a failed run: a wrong API key stops a full run started from the command line
(`manage.py sync_entitlements --all --wait`, a real process) with real workers; the command's
output and exit status, the run's row, the admin, the batches' results (what Flower shows) and
the metrics say the same: how many users were asked, how many failed, how many were not run
and why; the users not asked keep the state they had. A run skipped because another is in
progress is said skipped, not started."""

import json
import re
import subprocess
import sys
from collections import Counter

from django.test import Client
from django.urls import reverse
from django_celery_results.models import TaskResult

from core.models import EntitlementSyncState, SyncRun, User
from tests.faults.conftest import ALPHA, WRONG_KEY, synced_domains
from tests.faults.test_configuration_error import RUN_SETTINGS
from tests.support import worker_environment
from tests.support.workers import BASE_DIR

USERS = 40


def sync_entitlements(*arguments: str, env: dict) -> subprocess.CompletedProcess:
    """`manage.py sync_entitlements ...` as an operator runs it, in its own process."""
    return subprocess.run(
        [sys.executable, "manage.py", "sync_entitlements", *arguments],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_failed_run_reads_the_same_everywhere(
    start_worker,
    make_admins,
    wrong_key,
    shared_broker,
    tmp_path,
    report_figure,
):
    admins = make_admins(USERS, held=(ALPHA,))
    EntitlementSyncState.objects.filter(user__in=admins).update(status="ok", error_code="")
    start_worker(concurrency=2, **RUN_SETTINGS)

    command = sync_entitlements(
        "--all",
        "--wait",
        "--timeout",
        "120",
        env=worker_environment(redis_url=shared_broker, data_dir=tmp_path, LOG_LEVEL="WARNING"),
    )

    run = SyncRun.objects.get()
    asked, not_run = run.users_done + run.users_failed, run.users_not_run
    states = Counter(
        EntitlementSyncState.objects.filter(user__in=admins).values_list("status", flat=True)
    )
    # The run's row: stopped at the first refusals, the rest never asked.
    assert (run.status, run.error_code) == ("failed", "configuration")
    assert (run.users_done, run.users_failed) == (0, asked)
    assert asked == wrong_key.calls and asked < USERS
    assert asked + not_run == run.users_enqueued == USERS
    # Users not asked keep the state they had; those asked record the refusal.
    assert states == {"error": asked, "ok": not_run}
    assert all(synced_domains(user) == {ALPHA} for user in admins), "nothing is revoked"
    # The command: the same numbers, the reason, and a failure exit status.
    assert command.returncode == 5, command.stdout + command.stderr
    assert (
        f"Run #{run.pk} failed (configuration): {USERS} users, {asked} asked: 0 done (0 changed), "
        f"{asked} failed; 0 skipped, {not_run} not run." in command.stdout
    ), command.stdout
    assert "The upstream refused our configuration" in command.stderr
    # The admin.
    operator = Client()
    operator.force_login(User.objects.create_superuser(email="ops@example.org", password="x"))
    page = operator.get(reverse("admin:core_syncrun_changelist")).content.decode()
    row = re.search(rf'<tr>.*?href="[^"]*/{run.pk}/change/".*?</tr>', page, re.S).group()
    assert f"{asked}/{USERS} asked, {not_run} not run" in row
    # The batches' results, as Flower shows them: each failed with the run's reason and counts.
    batches = TaskResult.objects.filter(task_name="entitlements.sync_users_batch")
    assert {result.status for result in batches} == {"FAILURE"}
    failures = [json.loads(result.result) for result in batches]
    assert {failure["exc_type"] for failure in failures} == {"RunFailed"}
    totals = [failure["exc_message"][0] for failure in failures]
    assert {(total["run_status"], total["run_error_code"]) for total in totals} == {
        ("failed", "configuration")
    }
    assert sum(total["failed"] for total in totals) == asked
    assert sum(total["not_run"] for total in totals) == not_run
    assert WRONG_KEY not in command.stdout + command.stderr
    report_figure(
        f"faults/one truth about a failed run: wrong api_key, {USERS} users, command exit 5; "
        f"row, command, admin and batch results agree: {asked} asked ({asked} failed), "
        f"{not_run} not run (configuration), the {not_run} kept their state. Before: the "
        f"command said 0 failed and exited 0, the admin {USERS}/{USERS} (100 %), every user "
        "recorded error/configuration"
    )


def test_a_run_skipped_at_once_is_not_said_started(start_worker, upstream, shared_broker, tmp_path):
    start_worker()
    in_progress = SyncRun.objects.create(trigger="periodic")

    command = sync_entitlements(
        "--all",
        env=worker_environment(redis_url=shared_broker, data_dir=tmp_path, LOG_LEVEL="WARNING"),
    )

    skipped = SyncRun.objects.exclude(pk=in_progress.pk).get()
    assert skipped.status == "skipped"
    assert command.returncode == 1, command.stdout + command.stderr
    assert f"Run #{skipped.pk} skipped: run #{in_progress.pk} of the same scope is in progress" in (
        command.stderr
    )
    assert f"Run #{skipped.pk} running" not in command.stdout
