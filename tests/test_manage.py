"""manage.py beside `make run`: a command in the README's style sees the demo's settings
(data/demo.env), run as a user runs it, in a fresh process."""

import json
from pathlib import Path

import pytest

from tests.support.commands import manage, prepare_demo

DRY_RUN = ["sync_entitlements", "--user", "admin@alpha.example.org", "--dry-run"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("demo")
    prepare_demo(data_dir)
    return data_dir


def test_a_command_sees_the_demos_backend_and_says_so(demo_dir):
    completed = manage(*DRY_RUN, DATA_DIR=str(demo_dir))

    assert completed.returncode == 0, completed.stderr
    assert "admin@alpha.example.org: would grant alpha.example.org, grant beta.example.org" in (
        completed.stdout
    )
    assert f"Using the demo's settings from {demo_dir / 'demo.env'}" in completed.stderr
    # One user: no progress bar left behind.
    assert "%|" not in completed.stderr


def test_a_variable_set_in_the_environment_wins_over_the_demos(demo_dir, tmp_path):
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"admins_by_email": {}}))

    completed = manage(
        *DRY_RUN,
        DATA_DIR=str(demo_dir),
        ENTITLEMENTS_BACKEND_PARAMETERS=json.dumps({"mapping_file": str(mapping)}),
    )

    assert completed.returncode == 0, completed.stderr
    assert "would grant" not in completed.stdout
    assert "Dry run: 1 user checked, 0 would change." in completed.stdout


def test_another_database_is_not_given_the_demos_settings(demo_dir):
    completed = manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.ENTITLEMENTS_BACKEND_PARAMETERS)",
        DATA_DIR=str(demo_dir),
        DATABASE_URL="sqlite:///:memory:",
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[-1] == "{}"
    assert "demo" not in completed.stderr
