"""The sync_entitlements command: a user, a domain or everyone, queued or waited for."""

import re
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.management import CommandError

from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    MailDomainAccess,
    SyncRun,
)
from tests.support import worker_environment
from tests.support.broker import producer_app
from tests.support.commands import run
from tests.support.workers import BASE_DIR

ALPHA, BETA = "alpha.example.org", "beta.example.org"


class TestSyncEntitlements:
    def test_user_sync_is_requested_through_the_door(
        self, transactional_db, make_user, broker_queues
    ):
        user = make_user()

        out, _ = run("sync_entitlements", "--user", user.email)

        [message] = broker_queues.messages("interactive")
        assert message["args"] == [str(user.pk), "command"]
        assert f"task {message['id']}" in out
        assert EntitlementSyncState.objects.get(user=user).last_trigger == "command"

    def test_unknown_user_or_domain_is_a_clear_error(self, transactional_db):
        with pytest.raises(
            CommandError, match=re.escape("No user with email 'nobody@example.org'")
        ):
            run("sync_entitlements", "--user", "nobody@example.org")
        with pytest.raises(
            CommandError, match=re.escape("No mail domain named 'nowhere.example.org'")
        ):
            run("sync_entitlements", "--domain", "nowhere.example.org")

    def test_one_target_is_required(self, transactional_db):
        with pytest.raises(CommandError):
            run("sync_entitlements")
        with pytest.raises(CommandError):
            run("sync_entitlements", "--all", "--user", "someone@example.org")

    def test_dry_run_prints_the_plan_and_writes_nothing(
        self, domains, make_user, scripted_upstream
    ):
        gains, loses, same = make_user(), make_user(), make_user()
        MailDomainAccess.objects.create(
            user=loses, maildomain=domains[ALPHA], source=MailDomainAccess.Source.ENTITLEMENTS
        )
        scripted_upstream(
            admins_by_email={gains.email: [ALPHA, BETA], loses.email: [], same.email: []}
        )

        out, _ = run("sync_entitlements", "--all", "--dry-run")

        assert f"{gains.email}: would grant {ALPHA}, grant {BETA}" in out
        assert f"{loses.email}: would revoke {ALPHA}" in out
        assert same.email not in out
        assert "3 users checked, 2 would change" in out
        assert MailDomainAccess.objects.count() == 1
        assert not AccessAuditEntry.objects.exists()
        assert not EntitlementSyncState.objects.exists()

    def test_dry_run_of_one_user_says_why_nothing_would_change(
        self, transactional_db, make_user, scripted_upstream
    ):
        user = make_user()
        scripted_upstream(unavailable_emails=[user.email])

        out, _ = run("sync_entitlements", "--user", user.email, "--dry-run")

        assert f"{user.email}: upstream unavailable (http_503), nothing would change" in out

    def test_dry_run_and_wait_do_not_mix(self, transactional_db):
        with pytest.raises(CommandError, match="--wait has nothing to wait for"):
            run("sync_entitlements", "--all", "--dry-run", "--wait")

    def test_user_sync_waits_and_reports(self, worker, domains, make_user, scripted_upstream):
        user = make_user()
        scripted_upstream(admins_by_email={user.email: [ALPHA]})

        out, _ = run("sync_entitlements", "--user", user.email, "--wait", "--timeout", "20")

        assert "Status: ok" in out
        assert f"granted admin of {ALPHA}" in out

    def test_full_run_waits_with_a_progress_bar(
        self, worker, domains, make_user, scripted_upstream, settings
    ):
        settings.ENTITLEMENTS_SYNC_BATCH_SIZE = 2
        users = [make_user() for _ in range(5)]
        scripted_upstream(admins_by_email={users[0].email: [BETA]})

        out, err = run("sync_entitlements", "--all", "--wait", "--timeout", "20")

        run_row = SyncRun.objects.get()
        assert (run_row.trigger, run_row.status) == ("command", "done")
        assert (
            f"Run #{run_row.pk} done: 5 users, 5 asked: 5 done (1 changed), 0 failed; "
            "0 skipped, 0 not run." in out
        )
        # tqdm's bar, on stderr: the run's counters reach the total.
        assert "5/5" in err and "100%" in err

    def test_domain_run_waits(self, worker, domains, make_user, scripted_upstream):
        admin = make_user()
        MailDomainAccess.objects.create(user=admin, maildomain=domains[ALPHA])
        scripted_upstream(admins_by_email={admin.email: [ALPHA, BETA]})

        out, _ = run("sync_entitlements", "--domain", ALPHA, "--wait", "--timeout", "20")

        assert "done: 1 user, 1 asked: 1 done (1 changed)" in out
        assert SyncRun.objects.get().maildomain_name == ALPHA

    @pytest.mark.parametrize("timeout", ["0", "-5", "soon"])
    def test_a_timeout_that_is_not_a_positive_number_is_refused(self, transactional_db, timeout):
        with pytest.raises(CommandError, match="--timeout"):
            run("sync_entitlements", "--all", "--wait", "--timeout", timeout)

    def test_waiting_past_the_timeout_ends_with_a_message_and_exit_code_3(
        self, transactional_db, make_user, broker_queues
    ):
        user = make_user()

        # A broker and no worker: the request is queued and nobody serves it.
        with pytest.raises(CommandError, match=r"No sync of .* finished within 1 s") as refused:
            run("sync_entitlements", "--user", user.email, "--wait", "--timeout", "1")

        assert refused.value.returncode == 3

    def test_held_revocations_are_reported_with_exit_code_4(
        self, worker, domains, make_user, scripted_upstream, settings
    ):
        settings.ENTITLEMENTS_MAX_REVOKE_MIN = 0
        settings.ENTITLEMENTS_MAX_REVOKE_SHARE = 0
        users = [make_user() for _ in range(2)]
        for user in users:
            MailDomainAccess.objects.create(
                user=user, maildomain=domains[ALPHA], source=MailDomainAccess.Source.ENTITLEMENTS
            )
        scripted_upstream(admins_by_email={user.email: [] for user in users})

        with pytest.raises(CommandError, match="held 2 revocations") as held:
            run("sync_entitlements", "--all", "--wait", "--timeout", "20")

        run_row = SyncRun.objects.get()
        assert held.value.returncode == 4
        assert f"release_held_revocations --run {run_row.pk}" in str(held.value)
        assert MailDomainAccess.objects.count() == 2

    def test_full_run_while_the_broker_is_down_is_a_clear_error(
        self, transactional_db, private_redis
    ):
        with producer_app(private_redis.url), pytest.raises(CommandError, match="broker"):
            run("sync_entitlements", "--all")


@pytest.mark.parametrize("option", ["--user", "--domain"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_target_is_refused_not_taken_for_everyone(
    option, value, transactional_db, make_user, broker_queues, tmp_path
):
    """As a script with an unset variable runs it: `manage.py sync_entitlements --user "$X"`."""
    make_user()
    environment = worker_environment(
        redis_url=settings.CELERY_BROKER_URL, data_dir=tmp_path, LOG_LEVEL="WARNING"
    )

    finished = subprocess.run(
        [sys.executable, "manage.py", "sync_entitlements", option, value],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert finished.returncode == 2  # argparse's usage error
    assert f"{option}: must not be empty (an unset variable?)" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert "Resync started" not in finished.stdout
    assert broker_queues.length("bulk") == broker_queues.length("interactive") == 0
    assert not SyncRun.objects.exists()
