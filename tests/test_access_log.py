"""gunicorn's access log keeps no secret: the Procfile's web process (a real gunicorn, its
logger class messages.access_log.AccessLogger) logs the OIDC callback's path with `code`,
`state` and `error_description` masked, a Referer's query masked, and never a credential header,
even when an operator's access_log_format asks for them."""

import re
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import requests
from django.conf import settings

from bench.layout import expand, procfile_processes
from tests.support import wait_until, worker_environment

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "code": "the-authorization-code-4f2a",
    "state": "the-state-9b1c",
    "description": "alice.secret@alpha.example.org",
    "key": "a-provisioning-key-7d3e",
    "cookie": "the-session-cookie-5a0f",
}


@contextmanager
def procfile_web(tmp_path: Path, **variables: str):
    """The Procfile's `web` command on a free loopback port; yields (base URL, log path)."""
    command = shlex.split(
        expand(procfile_processes()["web"], {"WEB_BIND": "127.0.0.1:0", "WEB_CONCURRENCY": "1"})
    )
    command[0] = str(Path(sys.executable).with_name(command[0]))
    log_path = tmp_path / "web.log"
    environment = worker_environment(
        redis_url=settings.REDIS_URL,
        data_dir=tmp_path,
        DJANGO_DEBUG="false",
        PROVISIONING_API_KEY=SECRETS["key"],
        **variables,
    )
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: "Listening at:" in log_path.read_text() or process.poll() is not None)
        url = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log_path.read_text())[1]
        requests.get(f"{url}/healthz/", timeout=60)
        yield url, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


def visit_callbacks(url: str) -> None:
    """A provider's success and error redirects to the callback, with what a browser sends."""
    headers = {
        "Referer": f"https://idp.example.test/login?state={SECRETS['state']}",
        "Cookie": f"sessionid={SECRETS['cookie']}",
    }
    requests.get(
        f"{url}/oidc/callback/",
        params={"code": SECRETS["code"], "state": SECRETS["state"]},
        headers=headers,
        allow_redirects=False,
        timeout=30,
    )
    requests.get(
        f"{url}/oidc/callback/",
        params={
            "error": "access_denied",
            "error_description": f"user {SECRETS['description']} refused",
            "state": SECRETS["state"],
        },
        headers=headers,
        allow_redirects=False,
        timeout=30,
    )
    requests.post(
        f"{url}/api/v1.0/provisioning/maildomains/",
        headers={"Authorization": f"Bearer {SECRETS['key']}"},
        json={},
        timeout=30,
    )


def access_lines(log_path: Path) -> list[str]:
    # Each request is written once gunicorn finished it: wait for the last one.
    wait_until(lambda: "POST /api/v1.0/provisioning/maildomains/" in log_path.read_text())
    return [line for line in log_path.read_text().splitlines() if '"GET /oidc/' in line]


def leaked(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


def test_the_access_log_masks_the_callback_query(transactional_db, tmp_path):
    with procfile_web(tmp_path) as (url, log_path):
        visit_callbacks(url)
        lines = access_lines(log_path)

    assert len(lines) == 2
    assert '"GET /oidc/callback/?code=[Filtered]&state=[Filtered] HTTP/1.1"' in lines[0]
    assert (
        '"GET /oidc/callback/?error=[Filtered]&error_description=[Filtered]&state=[Filtered] '
        in lines[1]
    )
    assert '"https://idp.example.test/login?state=[Filtered]"' in lines[0]
    assert leaked(log_path.read_text()) == []


def test_no_format_an_operator_chooses_writes_a_secret(transactional_db, tmp_path):
    every_atom = " ".join(
        [
            "%(r)s %(q)s %(U)s %(f)s",
            "%({authorization}i)s %({cookie}i)s %({referer}i)s",
            "%({query_string}e)s %({raw_uri}e)s %({http_authorization}e)s",
            "%({location}o)s",
        ]
    )
    with procfile_web(tmp_path, GUNICORN_CMD_ARGS=f"--access-logformat='{every_atom}'") as (
        url,
        log_path,
    ):
        visit_callbacks(url)
        access_lines(log_path)

    assert leaked(log_path.read_text()) == []


def test_a_trailing_space_after_the_provisioning_key_is_not_part_of_it(transactional_db, tmp_path):
    """docs/api.md: HTTP strips whitespace around a header value; a tab inside is the key's."""
    with procfile_web(tmp_path) as (url, _log_path):
        endpoint = f"{url}/api/v1.0/provisioning/maildomains/"
        trailing = requests.post(
            endpoint, headers={"Authorization": f"Bearer {SECRETS['key']}  "}, json={}, timeout=30
        )
        inner_tab = requests.post(
            endpoint, headers={"Authorization": f"Bearer\t{SECRETS['key']}"}, json={}, timeout=30
        )

    # Past authentication: the empty body is the request's fault, not the key's.
    assert trailing.status_code == 400
    assert inner_tab.status_code == 403
