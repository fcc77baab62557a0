"""The Django admin as an operator sees it: the real web process (`collectstatic`, then the
Procfile's gunicorn with WhiteNoise, DEBUG off) against the test database, in Debian's headless
chromium. Every page must be styled and load every static file; a screenshot of each is kept."""

import base64
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from django.conf import settings
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomainAccess,
    User,
)
from tests import artifacts
from tests.factories import (
    AccessAuditEntryFactory,
    EntitlementSyncStateFactory,
    MailDomainAccessFactory,
    SyncRunFactory,
    UserFactory,
)
from tests.support import worker_environment
from worker.schedules import FULL_RESYNC_NAME

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = artifacts.ARTIFACTS_DIR / "screenshots"
# The admin's header background (--header-bg, #417690) as base.css sets it; an unstyled page
# leaves it transparent.
STYLED_HEADER_BACKGROUND = "rgb(65, 118, 144)"
PASSWORD = "browser-test-password-0123456789"  # a throwaway test account

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed "
    "(`apt-get install -y chromium chromium-driver`; .ci/run installs them)",
)


@pytest.fixture(scope="module")
def static_root(tmp_path_factory) -> Path:
    """STATIC_ROOT filled as the image build and `make run` fill it."""
    root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity=0"],
        cwd=ROOT,
        env={**_web_environment(root, tmp_path_factory.mktemp("data"))},
        check=True,
        timeout=300,
    )
    return root


def _web_environment(static_root: Path, data_dir: Path) -> dict[str, str]:
    return worker_environment(
        redis_url=settings.REDIS_URL,
        data_dir=data_dir,
        DJANGO_STATIC_ROOT=static_root,
        DJANGO_DEBUG="false",
    )


@pytest.fixture
def web_server(transactional_db, static_root, tmp_path):
    """The Procfile's web process on a free loopback port; yields its base URL."""
    log_path = tmp_path / "gunicorn.log"
    command = [
        str(Path(sys.executable).with_name("gunicorn")),
        "messages.wsgi",
        "--bind=127.0.0.1:0",
        "--workers=1",
        "--access-logfile=-",
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=_web_environment(static_root, tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield _wait_for_listening(process, log_path)
    finally:
        process.terminate()
        process.wait(timeout=30)
        print(f"gunicorn log: {log_path}")


def _wait_for_listening(process: subprocess.Popen, log_path: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log_path.read_text())
        if match:
            # The worker loads Django after the master listens: wait for its first answer, as
            # compose's start_period does, so no later request carries the start-up time.
            requests.get(f"{match[1]}/healthz/", timeout=60)
            return match[1]
        if process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"gunicorn did not start:\n{log_path.read_text()}")


@pytest.fixture
def browser(tmp_path):
    """Headless chromium through chromedriver, recording every network response."""
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        # The window: every list must fit it without a horizontal scroll.
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def operator_world():
    """A superuser, and what an operator looks for: a synced admin with an audit trail, a run
    that held a revocation, another user never synced."""
    operator = User.objects.create_superuser(email="operator@example.org", password=PASSWORD)
    admin = UserFactory(email="admin@alpha.example.org", full_name="Alice Admin")
    access = MailDomainAccessFactory(
        user=admin,
        maildomain__name="alpha.example.org",
        source=MailDomainAccess.Source.ENTITLEMENTS,
    )
    EntitlementSyncStateFactory(
        user=admin,
        status=EntitlementSyncState.Status.OK,
        entitled_domains=[access.maildomain.name],
        last_trigger="login",
    )
    AccessAuditEntryFactory(
        user=admin,
        maildomain_name="alpha.example.org",
        action=AccessAuditEntry.Action.GRANTED,
    )
    AccessAuditEntryFactory(
        user=admin,
        maildomain_name="retired.example.org",
        action=AccessAuditEntry.Action.REVOKED,
        trigger="periodic",
    )
    run = SyncRunFactory(users_enqueued=2, users_done=2, users_changed=1)
    HeldRevocation.objects.create(run=run, user=admin, maildomain_name="beta.example.org")
    UserFactory(email="newcomer@example.org")
    return {"operator": operator, "admin": admin, "run": run}


def _responses(driver) -> list[tuple[str, int]]:
    """(url, status) of every response since the last call."""
    responses = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            responses.append((response["url"], response["status"]))
    return responses


def _save_full_page_screenshot(driver, path: Path) -> None:
    """The whole page, not only the window: an audit trail sits below the fold."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def _visit(driver, base_url: str, path: str, *, name: str, expect: list[str]) -> None:
    """Open `path`, check it is styled with every static file served, keep a screenshot."""
    driver.get(base_url + path)
    responses = _responses(driver)
    _save_full_page_screenshot(driver, SCREENSHOTS / f"{name}.png")

    page = [status for url, status in responses if url.split("?")[0] == base_url + path]
    assert page == [200], f"{name}: {path} answered {page}"
    static = [(url, status) for url, status in responses if "/static/" in url]
    failed = [(url, status) for url, status in static if status != 200]
    assert not failed, f"{name}: static files not served: {failed}"
    stylesheets = [url for url, _ in static if re.search(r"/static/admin/css/base\.\w+\.css$", url)]
    assert stylesheets, f"{name}: base.css (hashed name) was not loaded: {static}"
    background = driver.execute_script(
        "return getComputedStyle(document.getElementById('header')).backgroundColor"
    )
    assert background == STYLED_HEADER_BACKGROUND, f"{name}: the page is not styled"
    text = driver.find_element(By.TAG_NAME, "body").text
    for expected in expect:
        assert expected in text, f"{name}: {expected!r} not on the page"
    # A list fits the window: its table needs no horizontal scroll, nothing is cut off.
    overflow = driver.execute_script(
        "const r = document.querySelector('#changelist .results');"
        "return r ? r.scrollWidth - r.clientWidth : 0"
    )
    assert overflow <= 0, f"{name}: the list is {overflow} px wider than the window"


def test_operator_pages_are_styled_and_serve_every_static_file(web_server, browser, operator_world):
    artifacts.record(description="admin screenshots", path=SCREENSHOTS)
    admin = operator_world["admin"]

    _visit(browser, web_server, "/admin/login/", name="01-login", expect=["Email", "Password"])
    browser.find_element(By.ID, "id_username").send_keys("operator@example.org")
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    # The click returns once the form is sent, not once the next page is there.
    with contextlib.suppress(TimeoutException):
        WebDriverWait(browser, 30).until(lambda driver: driver.current_url.endswith("/admin/"))
    assert browser.current_url == f"{web_server}/admin/", "the operator could not log in"
    _responses(browser)  # the login's own: the index is opened again below
    run = operator_world["run"]
    _visit(
        browser,
        web_server,
        "/admin/",
        name="01b-index",
        expect=[
            "La Suite Messages: entitlements",
            "Service at a glance",
            f"Last run: #{run.pk} All admins, done",
            "Next full resync:",
            "Circuit breaker: closed",
            "Held revocations waiting for an operator: 1",
            "Failed syncs in the last hour: 0",
        ],
    )
    # Times to the second, with their zone.
    started = browser.find_element(By.ID, "service-overview").text
    assert re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", started), started

    _visit(
        browser,
        web_server,
        "/admin/core/user/",
        name="02-users",
        expect=["admin@alpha.example.org", "Up to date", "newcomer@example.org", "Never synced"],
    )
    _visit(
        browser,
        web_server,
        f"/admin/core/user/{admin.pk}/change/",
        name="03-user-audit-trail",
        expect=["Up to date", "retired.example.org", "Revoked", "beta.example.org"],
    )
    _visit(
        browser, web_server, "/admin/core/syncrun/", name="04-sync-runs", expect=["Periodic resync"]
    )
    _visit(
        browser,
        web_server,
        "/admin/core/heldrevocation/",
        name="05-held-revocations",
        expect=["beta.example.org", "admin@alpha.example.org"],
    )
    _visit(
        browser,
        web_server,
        "/admin/django_celery_beat/periodictask/",
        name="06-periodic-tasks",
        expect=[FULL_RESYNC_NAME],
    )


def test_gunicorn_serves_static_files_and_health(web_server):
    """What a reverse proxy or a probe gets from the web process itself."""
    stylesheet = requests.get(f"{web_server}/static/admin/css/base.css", timeout=10)
    health = requests.get(f"{web_server}/healthz/", timeout=30)

    assert stylesheet.status_code == 200
    assert stylesheet.headers["Content-Type"].startswith("text/css")
    assert "--header-bg" in stylesheet.text
    assert health.status_code == 200, health.text
    assert health.json() == {"database": "ok", "cache": "ok", "broker": "ok"}


def test_compose_healthcheck_command_passes_against_gunicorn(web_server):
    """docker-compose.yml's probe for the web service, run as is but for the port."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["web"]["healthcheck"]["test"][1:]  # after "CMD"
    command = [part.replace("http://127.0.0.1:8000", web_server) for part in command]

    probe = subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, timeout=60
    )

    assert probe.returncode == 0, probe.stderr


def test_hashed_static_files_are_cached_for_good(web_server, static_root):
    """collectstatic's hashed names change with their content: browsers may keep them."""
    manifest = json.loads((static_root / "staticfiles.json").read_text())
    hashed = manifest["paths"]["admin/css/base.css"]

    response = requests.get(f"{web_server}/static/{hashed}", timeout=10)

    assert response.status_code == 200
    assert "immutable" in response.headers["Cache-Control"]
