"""The demo of `make run` shows change signals: after an edit of the demo's entitlements file,
the one-line command setup_demo prints sends DeployCenter's webhook (from the demo's webhooks
config, as the stub sends them) to the running web, and the worker lands the edit within
seconds, long before the periodic run."""

import json
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

from tests import figures
from tests.support import wait_until
from tests.test_embedded_starts import BASE_DIR, BIN, _environment, _prepare, _stop

ADMIN = "admin@alpha.example.org"

_measured: list[str] = []


@figures.reporter
def _figures() -> list[str]:
    return list(_measured)


def admin_domains(database) -> set[str]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT d.name FROM core_maildomainaccess a JOIN core_user u ON a.user_id = u.id "
            "JOIN core_maildomain d ON a.maildomain_id = d.id WHERE u.email = ?",
            (ADMIN,),
        ).fetchall()
    return {name for (name,) in rows}


@pytest.mark.long
def test_an_edit_signalled_by_the_printed_command_lands_within_seconds(tmp_path):
    data_dir = tmp_path / "data"
    environment = _environment(data_dir)
    _prepare(environment)
    database = data_dir / "db.sqlite3"
    web = f"http://{environment['WEB_BIND']}"
    with (tmp_path / "run.log").open("wb") as log:
        honcho = subprocess.Popen(
            [BIN / "honcho", "start", "-f", "Procfile", "-e", data_dir / "demo.env"],
            cwd=BASE_DIR,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(lambda: _answers(f"{web}/healthz/"), timeout=120, message="the web")
            mapping_file = data_dir / "demo_entitlements.json"
            mapping = json.loads(mapping_file.read_text())
            mapping["admins_by_email"][ADMIN] = ["gamma.example.org"]
            mapping_file.write_text(json.dumps(mapping))

            # The command setup_demo prints, as an operator would paste it.
            sent = _signal(data_dir, environment)
            signalled = time.monotonic()

            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert sent.stdout.strip().endswith(": 202"), sent.stdout
            # The worker may still be starting: a generous bound, the figure is printed below.
            wait_until(
                lambda: admin_domains(database) == {"gamma.example.org"},
                timeout=60,
                message="the signalled edit",
            )
            landed = time.monotonic() - signalled
        finally:
            _stop(honcho)
    with sqlite3.connect(database) as connection:
        triggers = connection.execute(
            "SELECT DISTINCT trigger FROM core_accessauditentry"
        ).fetchall()
    assert triggers == [("change_signal",)]
    _measured.append(
        f"make run demo: an edit signalled by the printed command, rights after {landed:.1f} s"
    )


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _signal(data_dir, environment) -> subprocess.CompletedProcess:
    printed = subprocess.run(
        [sys.executable, "manage.py", "setup_demo"],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    [line] = [line for line in printed.splitlines() if "tests.deploycenter_stub send" in line]
    command = line.split("Signal it", 1)[1].split()
    assert command[0] == ".venv/bin/python"
    return subprocess.run(
        [sys.executable, *command[1:]],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
