"""The setup_demo command: the demo's domains, users and files, idempotent."""

import json
import os
import stat

from honcho.environ import parse as parse_env_file

from core.models import MailDomain, User
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

    def test_the_demo_signals_changes_with_its_own_token(
        self, transactional_db, settings, tmp_path
    ):
        settings.DATA_DIR = tmp_path
        first, _ = run("setup_demo")
        token = (tmp_path / "demo_changes_token").read_text().strip()
        run("setup_demo")

        env = parse_env_file((tmp_path / "demo.env").read_text())
        [webhook] = json.loads((tmp_path / "demo_webhooks.json").read_text())
        assert env["ENTITLEMENTS_CHANGES_TOKEN"] == token, "kept across runs"
        assert len(token) >= 16
        assert webhook["headers"] == {"Authorization": f"Bearer {token}"}
        assert webhook["url"].endswith("/api/v1.0/entitlements/changes/")
        assert "account.updated" in webhook["event_types"]
        assert f"send --webhooks {tmp_path / 'demo_webhooks.json'} account.updated" in first
        for secret in ("demo_changes_token", "demo_webhooks.json"):
            assert stat.S_IMODE(os.stat(tmp_path / secret).st_mode) == 0o600
