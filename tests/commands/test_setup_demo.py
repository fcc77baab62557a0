"""The setup_demo command: the demo's domains, users and files, idempotent."""

import json
import os
import stat

from honcho.environ import parse as parse_env_file

from core.entitlements import sync_user_entitlements
from core.management.commands.setup_demo import AWAITING_LOGIN, DEMO_USERS, LOCAL_BACKEND
from core.models import MailDomain, Trigger, User
from core.selectors import users_due_for_full_resync
from tests.support.commands import run


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


class TestDemoStory:
    """The README's steps happen when the reader takes them: no periodic run grants first."""

    def test_periodic_run_waits_for_the_login_then_revokes_an_edit(
        self, transactional_db, settings, tmp_path
    ):
        settings.DATA_DIR = tmp_path
        run("setup_demo")
        mapping_file = tmp_path / "demo_entitlements.json"
        settings.ENTITLEMENTS_BACKEND = LOCAL_BACKEND
        settings.ENTITLEMENTS_BACKEND_PARAMETERS = {"mapping_file": str(mapping_file)}
        settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
        admin = User.objects.get(email="admin@alpha.example.org")
        demo_users = set(User.objects.filter(email__in=DEMO_USERS).values_list("pk", flat=True))

        # Before any login, a periodic run covers none of the demo users.
        assert demo_users.isdisjoint(users_due_for_full_resync())
        assert admin.sync_state.error_code == AWAITING_LOGIN

        # Step 1: the login grants.
        login = sync_user_entitlements(user_id=admin.pk, trigger=Trigger.LOGIN, task_id="t1")
        assert sorted(login.added) == ["alpha.example.org", "beta.example.org"]

        # Step 2: the mapping edited, the next periodic run covers the user and revokes.
        mapping_file.write_text(
            json.dumps({"admins_by_email": {"admin@alpha.example.org": ["alpha.example.org"]}})
        )
        assert admin.pk in set(users_due_for_full_resync())
        periodic = sync_user_entitlements(user_id=admin.pk, trigger=Trigger.PERIODIC, task_id="t2")
        assert periodic.removed == ["beta.example.org"]

        # A second setup_demo (every `make run`) does not reset a story under way.
        run("setup_demo")
        assert User.objects.get(pk=admin.pk).sync_state.status == "ok"
