"""The admin's Sync runs page: its button starts a full resync (the run it starts shows there, a
broker down is a clear error); it shows the circuit breaker and the rate limit toward the
upstream."""

import re

import pytest
from django.core.cache import caches
from django.test import Client
from django.urls import reverse
from django_redis import get_redis_connection

from core.entitlements.circuit_breaker import CircuitBreaker
from core.entitlements.rate_limit import get_rate_limiter
from core.entitlements.upstream_guard import Priority
from core.models import SyncRun
from tests.support.admin_pages import RESYNC_ALL, RUNS, shown
from tests.support.broker import producer_app

THRESHOLD = 3


@pytest.fixture
def guard_settings(settings):
    """A short breaker and a known rate limit; the test's Redis keys deleted after."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = THRESHOLD
    settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = 60.0
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 50.0
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 50
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.2
    prefix = caches["default"].key_prefix
    yield
    connection = get_redis_connection("default")
    for key in connection.scan_iter(f"{prefix}:*"):
        connection.delete(key)


def status_block(admin_client) -> str:
    """The status block of the Sync runs page, whitespace collapsed."""
    response = admin_client.get(reverse("admin:core_syncrun_changelist"))
    assert response.status_code == 200
    block = re.search(r'<div class="module" id="upstream-status">(.*?)</div>', response.text, re.S)
    assert block, "no upstream status on the Sync runs page"
    return " ".join(block.group(1).split())


def test_sync_runs_page_shows_the_circuit_open_after_failures(admin_client, guard_settings):
    shown = status_block(admin_client)
    assert "<strong>closed</strong>: 0 of 3 failures in a row" in shown
    assert "<strong>50.0 per second</strong>, 50.0 of 50 tokens left" in shown

    breaker = CircuitBreaker()
    for _ in range(THRESHOLD):
        breaker.record_failure()

    shown = status_block(admin_client)
    assert re.search(r"<strong>open</strong>: calls refused, reopens in (59|60) s", shown)


def test_sync_runs_page_shows_the_slots_a_run_booked(admin_client, guard_settings, settings):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 1.0  # slots 1 s apart: the page sees them
    limiter = get_rate_limiter()
    # A run's first slot goes now; its next thread books the slot 1 s later and sleeps to it.
    assert limiter.acquire(priority=Priority.BULK, timeout=0)
    assert limiter.acquire(priority=Priority.BULK, timeout=2)

    shown = status_block(admin_client)

    assert re.search(
        r"<strong>1.0 per second</strong>, 4[89]\.\d+ of 50 tokens left \(10.0 reserved for "
        r"logins\), [01]\.\d+ s of calls booked ahead by a run\.",
        shown,
    )


def test_sync_runs_page_renders_with_redis_unreachable(admin_client, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    }

    shown = status_block(admin_client)

    assert "<strong>unknown</strong> (Redis unreachable" in shown


class TestResyncAll:
    def test_the_button_leads_to_a_form_that_starts_the_full_run(
        self, superuser_client, broker_queues
    ):
        changelist = superuser_client.get(RUNS).content.decode()
        form = superuser_client.get(RESYNC_ALL)

        assert f'href="{RESYNC_ALL}"' in changelist
        assert form.status_code == 200
        assert 'name="csrfmiddlewaretoken"' in form.content.decode()
        response = superuser_client.post(RESYNC_ALL, follow=True)

        [message] = broker_queues.messages("bulk")
        assert (message["task"], message["args"]) == ("entitlements.sync_all_admins", ["admin"])
        assert response.redirect_chain == [(RUNS, 302)]
        assert shown(response) == [
            f"Full resync started: task {message['id']}. Its run shows in the admin's sync runs "
            "once a worker takes it."
        ]

    def test_the_run_it_starts_shows_in_the_changelist(
        self, superuser_client, celery_worker, celery_app, broker_queues, scripted_upstream
    ):
        [text] = shown(superuser_client.post(RESYNC_ALL, follow=True))
        task_id = re.search(r"task (\S+)\. ", text).group(1)
        totals = celery_app.AsyncResult(task_id).get(timeout=20)

        run = SyncRun.objects.get(pk=totals["run_id"])
        assert (run.trigger, run.scope) == ("admin", "all")
        assert superuser_client.get(RUNS).context["cl"].result_list[0] == run

    def test_a_post_without_the_csrf_token_is_refused(self, transactional_db, admin_user):
        browser = Client(enforce_csrf_checks=True)
        browser.force_login(admin_user)

        assert browser.post(RESYNC_ALL).status_code == 403

    def test_broker_down_is_a_clear_error(self, superuser_client, private_redis):
        with producer_app(private_redis.url):
            response = superuser_client.post(RESYNC_ALL, follow=True)

        assert shown(response) == [
            "The task broker cannot be reached: the full resync was not started. Try again later."
        ]


def test_an_organisation_run_of_a_change_signal_shows_and_is_found_by_siret(admin_client):
    run = SyncRun.objects.create(
        scope=SyncRun.Scope.ORGANISATION,
        organization_siret="12345678900017",
        trigger="change_signal",
        status=SyncRun.Status.DONE,
    )
    other = SyncRun.objects.create(scope=SyncRun.Scope.ALL, trigger="periodic")

    changelist = admin_client.get(RUNS, {"q": "12345678900017"}).content.decode()
    detail = admin_client.get(reverse("admin:core_syncrun_change", args=[run.pk])).content.decode()

    assert "One organisation" in changelist
    assert "Change signalled by DeployCenter" in changelist
    assert reverse("admin:core_syncrun_change", args=[run.pk]) in changelist
    assert reverse("admin:core_syncrun_change", args=[other.pk]) not in changelist
    assert "12345678900017" in detail
