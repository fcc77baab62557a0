"""Management commands: sync_entitlements, simulate_login, setup_demo, run_flower."""

import io
import json
import os
import re
import stat

import pytest
from django.core.management import CommandError, call_command
from honcho.environ import parse as parse_env_file

from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    MailDomain,
    MailDomainAccess,
    SyncRun,
    User,
)
from tests.support.broker import producer_app

ALPHA, BETA = "alpha.example.org", "beta.example.org"


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def domains(transactional_db):
    return {name: MailDomain.objects.create(name=name) for name in (ALPHA, BETA)}


@pytest.fixture
def worker(transactional_db, celery_worker, celery_app, depends_on_current_app, broker_queues):
    return celery_app


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
        assert f"Run #{run_row.pk} done: 5 users, 5 done (1 changed), 0 failed, 0 skipped." in out
        # tqdm's bar, on stderr: the run's counters reach the total.
        assert "5/5" in err and "100%" in err

    def test_domain_run_waits(self, worker, domains, make_user, scripted_upstream):
        admin = make_user()
        MailDomainAccess.objects.create(user=admin, maildomain=domains[ALPHA])
        scripted_upstream(admins_by_email={admin.email: [ALPHA, BETA]})

        out, _ = run("sync_entitlements", "--domain", ALPHA, "--wait", "--timeout", "20")

        assert "done: 1 user, 1 done (1 changed)" in out
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


class TestSimulateLogin:
    def test_creates_the_user_stores_forwarded_claims_and_requests_a_sync(
        self, transactional_db, broker_queues, scripted_upstream
    ):
        scripted_upstream(claims=["siret"])

        out, _ = run(
            "simulate_login", "New.Person@Example.ORG", "--claim", "siret=123", "--claim", "x=y"
        )

        user = User.objects.get(email="New.Person@example.org")
        assert user.sub == "simulated:New.Person@example.org"
        state = EntitlementSyncState.objects.get(user=user)
        assert state.forwarded_claims == {"siret": "123"}
        [message] = broker_queues.messages("interactive")
        assert message["args"] == [str(user.pk), "login"]
        assert f"Sync queued: task {message['id']}" in out

    def test_an_existing_user_keeps_their_account(
        self, transactional_db, make_user, broker_queues, scripted_upstream
    ):
        user = make_user(sub=None)

        run("simulate_login", user.email)
        run("simulate_login", user.email)

        assert User.objects.count() == 1
        user.refresh_from_db()
        assert user.sub == f"simulated:{user.email}"
        # The second login fell inside the dedup window.
        assert broker_queues.length("interactive") == 1

    @pytest.mark.parametrize("value", ["not-an-email", "a@", "@example.org", "a b@example.org"])
    def test_a_value_that_is_not_an_email_is_refused(self, transactional_db, value):
        with pytest.raises(CommandError, match="not an e-mail address"):
            run("simulate_login", value)
        assert not User.objects.exists()

    def test_malformed_claim_is_a_clear_error(self, transactional_db):
        with pytest.raises(CommandError, match="NAME=VALUE"):
            run("simulate_login", "a@example.org", "--claim", "siret")


class TestSetupDemo:
    def test_is_idempotent_and_prints_working_credentials(
        self, transactional_db, settings, tmp_path
    ):
        settings.DATA_DIR = tmp_path

        first, _ = run("setup_demo")
        (tmp_path / "demo_entitlements.json").write_text('{"admins_by_email": {}}')
        second, _ = run("setup_demo")

        assert first == second
        assert MailDomain.objects.count() == 3
        assert User.objects.count() == 4
        password = (tmp_path / "demo_password").read_text().strip()
        assert f"operator@example.org / {password}" in first
        operator = User.objects.get(email="operator@example.org")
        assert operator.is_superuser and operator.check_password(password)
        assert json.loads((tmp_path / "demo_entitlements.json").read_text()) == {
            "admins_by_email": {}
        }, "an edited mapping is kept"
        for secret in ("demo_password", "demo.env"):
            assert stat.S_IMODE(os.stat(tmp_path / secret).st_mode) == 0o600

    def test_environment_file_reads_back_through_honcho(self, transactional_db, settings, tmp_path):
        settings.DATA_DIR = tmp_path
        run("setup_demo")

        env = parse_env_file((tmp_path / "demo.env").read_text())

        assert env["ENTITLEMENTS_BACKEND"].endswith("LocalEntitlementsBackend")
        assert json.loads(env["ENTITLEMENTS_BACKEND_PARAMETERS"]) == {
            "mapping_file": str(tmp_path / "demo_entitlements.json")
        }
        password = (tmp_path / "demo_password").read_text().strip()
        assert env["FLOWER_BASIC_AUTH"] == f"operator@example.org:{password}"


class TestRunFlowerRefusals:
    def test_refuses_without_basic_auth_outside_debug(self, settings):
        settings.FLOWER_BASIC_AUTH = ""
        settings.DEBUG = False

        with pytest.raises(CommandError, match="FLOWER_BASIC_AUTH is not set"):
            run("run_flower")

    def test_refuses_open_flower_on_a_public_address_even_in_debug(self, settings):
        settings.FLOWER_BASIC_AUTH = ""
        settings.DEBUG = True

        with pytest.raises(CommandError, match="FLOWER_BASIC_AUTH is not set"):
            run("run_flower", "--address", "0.0.0.0")

    @pytest.mark.parametrize("auth", ["admin", "admin:", ":secret", "a:b,broken"])
    def test_refuses_malformed_credentials(self, settings, auth):
        settings.FLOWER_BASIC_AUTH = auth

        with pytest.raises(CommandError, match="user:password"):
            run("run_flower")
