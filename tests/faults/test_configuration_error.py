"""A wrong configuration and an outage reach the operator loudly but once.

Real `celery -A messages worker` subprocesses report to a local Sentry ingest
(tests/support/sentry_ingest.py); the DeployCenter stub over HTTP refuses a wrong API key with a
401 as the real server does. A full run stops at the first refusal: the run is failed with its
error code, the upstream sees a handful of calls instead of one per user, one ERROR line says
what to check, and Sentry gets one event. Login syncs with the wrong key report one event for
the episode, not one per user; an outage reports the opening of the circuit, once; an upstream
answering nonsense to every user of a run reports it once for the run, and once per episode
for login syncs.
"""

import re
import time
from collections import Counter

import pytest
from django.db.models import F
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from core.entitlements.sync_requests import request_resync, request_sync
from core.models import EntitlementSyncState, SyncRun, User
from tests.faults.conftest import ALPHA, WRONG_KEY, synced_domains
from tests.support import wait_until
from tests.support.sentry_ingest import SentryIngest

USERS = 40
RUN_SETTINGS = {
    "ENTITLEMENTS_SYNC_BATCH_SIZE": 5,
    "ENTITLEMENTS_SYNC_BATCH_CONCURRENCY": 2,
}


@pytest.fixture
def sentry_ingest():
    with SentryIngest() as ingest:
        yield ingest


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


def settled_events(ingest: SentryIngest, *, quiet_seconds: float = 3.0) -> list[dict]:
    """The events once at least one arrived and none came for `quiet_seconds`."""
    wait_until(ingest.events, message="an event at the ingest")
    count = -1
    while count != len(ingest.events()):
        count = len(ingest.events())
        time.sleep(quiet_seconds)
    return ingest.events()


def test_a_wrong_key_stops_the_full_run_with_one_error_and_one_event(
    start_worker, make_admins, wrong_key, sentry_ingest, report_figure
):
    admins = make_admins(USERS, held=(ALPHA,))
    worker = start_worker(concurrency=2, SENTRY_DSN=sentry_ingest.dsn, **RUN_SETTINGS)
    started = timezone.now()

    request_resync(trigger="periodic")
    run = wait_until(
        lambda: (
            SyncRun.objects.filter(started_at__gte=started)
            .exclude(status=SyncRun.Status.RUNNING)
            .first()
        ),
        timeout=60,
        message="the run's end",
    )
    # Every batch is counted (the run's counters reach the total), then nothing more comes.
    run = wait_until(
        lambda: SyncRun.objects.filter(
            pk=run.pk,
            users_done=0,
            users_enqueued=USERS,
            users_failed=F("users_enqueued") - F("users_not_run"),
        ).first(),
        message="every batch of the run counted",
    )
    events = settled_events(sentry_ingest)

    assert (run.status, run.error_code) == ("failed", "configuration")
    # Only the calls already in flight when the first 401 came: 2 batches x 2 threads.
    assert wrong_key.calls <= 4, wrong_key.calls
    assert all(synced_domains(user) == {ALPHA} for user in admins), "nothing is revoked"
    # Those asked record the refusal; the others were not run and keep their state.
    assert run.users_failed == wrong_key.calls
    assert Counter(
        EntitlementSyncState.objects.filter(user__in=admins).values_list("status", flat=True)
    ) == {"error": run.users_failed, "never": run.users_not_run}
    [error] = error_lines(worker.log())
    assert f"resync run {run.pk} stopped" in error
    assert all(word in error for word in ("http_401", "api_key", "service_id"))
    assert WRONG_KEY not in worker.log()
    [event] = events
    assert event["logentry"]["params"][0] == run.pk
    assert WRONG_KEY.encode() not in sentry_ingest.raw()
    # The admin's sync runs show it.
    operator = Client()
    operator.force_login(User.objects.create_superuser(email="ops@example.org", password="x"))
    page = operator.get(reverse("admin:core_syncrun_changelist")).content.decode()
    row = re.search(rf'<tr>.*?href="[^"]*/{run.pk}/change/".*?</tr>', page, re.S).group()
    assert "Failed" in row
    assert ">configuration<" in row
    report_figure(
        f"faults/wrong api_key, full run of {USERS} users: {wrong_key.calls} upstream calls, "
        f"run failed/configuration, 1 ERROR line, {len(events)} Sentry event"
    )


def test_login_syncs_with_a_wrong_key_fail_in_flower_and_report_one_event(
    start_worker, make_admins, wrong_key, sentry_ingest
):
    admins = make_admins(5)
    worker = start_worker(SENTRY_DSN=sentry_ingest.dsn)

    task_ids = [request_sync(user=user, trigger="login").task_id for user in admins]
    ended = TaskResult.objects.filter(task_id__in=task_ids, status__in=("SUCCESS", "FAILURE"))
    results = wait_until(
        lambda: found if len(found := list(ended.all())) == len(admins) else None,
        message="every sync's result",
    )
    events = settled_events(sentry_ingest)

    # Each task failed (what Flower shows), with a message an operator can read.
    assert {result.status for result in results} == {"FAILURE"}
    assert all("not applied: error (http_401)" in result.result for result in results)
    assert wrong_key.calls == len(admins)
    # One event for the episode, none per task: the failures are expected ones.
    [event] = events
    assert "http_401" in event["logentry"]["message"] % tuple(event["logentry"]["params"])
    assert "Traceback" not in worker.log()
    assert len(error_lines(worker.log())) == 1


def test_an_outage_reports_the_opening_of_the_circuit_once(
    start_worker, make_admins, upstream, sentry_ingest, report_figure
):
    make_admins(USERS)
    upstream.fail_with(503)
    worker = start_worker(
        concurrency=2,
        SENTRY_DSN=sentry_ingest.dsn,
        ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD=5,
        # Long enough that the circuit never re-opens during the test.
        ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS=300,
        ENTITLEMENTS_SYNC_MAX_RETRIES=1,
        **RUN_SETTINGS,
    )
    started = timezone.now()

    request_resync(trigger="periodic")
    run = wait_until(
        lambda: SyncRun.objects.filter(started_at__gte=started, status="done").first(),
        timeout=120,
        message="the run's end",
    )
    events = settled_events(sentry_ingest)

    assert run.users_failed == USERS
    [event] = events
    assert event["level"] == "error"
    assert event["logentry"]["message"].startswith("entitlements circuit opened")
    assert len(re.findall(r"circuit opened", worker.log())) == 1
    report_figure(
        f"faults/upstream 503 during a full run of {USERS} users: {upstream.calls} upstream "
        f"calls, {len(events)} Sentry event (the circuit's opening)"
    )


def test_a_malformed_answer_for_every_user_of_a_run_reaches_sentry_once(
    start_worker, make_admins, upstream, sentry_ingest, report_figure
):
    admins = make_admins(USERS, held=(ALPHA,))
    upstream.answer_raw(b"<html>not an answer</html>", content_type="text/html")
    worker = start_worker(concurrency=2, SENTRY_DSN=sentry_ingest.dsn, **RUN_SETTINGS)
    started = timezone.now()

    request_resync(trigger="periodic")
    run = wait_until(
        lambda: SyncRun.objects.filter(started_at__gte=started, status="done").first(),
        timeout=120,
        message="the run's end",
    )
    events = settled_events(sentry_ingest)

    assert set(
        EntitlementSyncState.objects.filter(user__in=admins).values_list("status", flat=True)
    ) == {"invalid"}
    assert all(synced_domains(user) == {ALPHA} for user in admins), "nothing is revoked"
    [event] = events
    assert event["level"] == "error"
    message = event["logentry"]["message"] % tuple(event["logentry"]["params"])
    assert message.startswith(f"resync run {run.pk}: the entitlements service answered")
    assert "once per run" in message
    assert len(error_lines(worker.log())) == 1
    assert len(re.findall(r"\(invalid\)|: invalid \(", worker.log())) >= USERS, "a warning each"
    assert "@example.org" not in worker.log() and b"@example.org" not in sentry_ingest.raw()
    report_figure(
        f"faults/malformed answer to all {USERS} users of a full run: {upstream.calls} upstream "
        f"calls, {len(error_lines(worker.log()))} ERROR line, {len(events)} Sentry event"
    )


def test_malformed_answers_to_login_syncs_report_one_event(
    start_worker, make_admins, upstream, sentry_ingest
):
    admins = make_admins(5)
    upstream.answer_raw(b"{}", content_type="application/json")
    worker = start_worker(SENTRY_DSN=sentry_ingest.dsn)

    for user in admins:
        request_sync(user=user, trigger="login")
    wait_until(
        lambda: (
            EntitlementSyncState.objects.filter(user__in=admins, status="invalid").count()
            == len(admins)
        ),
        message="every sync's invalid answer",
    )
    events = settled_events(sentry_ingest)

    [event] = events
    assert "once per 3600 s" in event["logentry"]["message"] % tuple(event["logentry"]["params"])
    assert len(error_lines(worker.log())) == 1
