"""The admin's index opens on what an operator checks first (core/admin/overview.py): the last
and next runs, the circuit and rate limit, held revocations, requests waiting, failed syncs in
the last hour; each count links to a list that shows exactly those rows."""

import re
from datetime import timedelta
from html import unescape

import pytest
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from core.models import EntitlementSyncState, HeldRevocation
from core.task_names import TaskName
from tests.factories import EntitlementSyncStateFactory, SyncRunFactory, UserFactory

INDEX = reverse("admin:index")

pytestmark = pytest.mark.usefixtures("fast_password_hasher")


def text_of(response) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def link_after(response, label: str) -> str:
    """The href of the first link after `label` on the page."""
    html = response.content.decode()
    return unescape(re.search(r'href="([^"]+)"', html[html.index(label) :])[1])


@pytest.fixture
def world(db):
    """A finished run, a held revocation, a request waiting, failed syncs old and recent."""
    now = timezone.now()
    run = SyncRunFactory(users_enqueued=3, users_done=3, users_changed=1)
    HeldRevocation.objects.create(run=run, user=UserFactory(), maildomain_name="b.example.org")
    EntitlementSyncStateFactory(status="ok", requested_at=now, finished_at=now - timedelta(hours=1))
    # Served: a sync started after the request (and ended at its finished_at).
    served = {"requested_at": now - timedelta(hours=3), "started_at": now - timedelta(hours=3)}
    recent = EntitlementSyncStateFactory(
        status="unavailable", error_code="timeout", finished_at=now - timedelta(minutes=5), **served
    )
    EntitlementSyncStateFactory(status="error", finished_at=now - timedelta(hours=2), **served)
    EntitlementSyncStateFactory(status="ok", finished_at=now, **served)
    return {"run": run, "recent_failure": recent}


def test_the_index_is_branded_and_shows_the_service_state(admin_client, world):
    page = admin_client.get(INDEX)
    shown = text_of(page)

    assert "<title>Service at a glance | Messages entitlements</title>" in page.content.decode()
    assert "La Suite Messages: entitlements" in shown
    assert f"Last run: #{world['run'].pk} All admins, done" in shown
    assert "3 of 3 users done, 1 changed, 0 failed" in shown
    assert "Circuit breaker: closed" in shown
    assert "Held revocations waiting for an operator: 1" in shown
    assert "Sync requests waiting for a worker: 1" in shown
    assert "Failed syncs in the last hour: 1" in shown


def test_each_count_links_to_its_rows(admin_client, world):
    page = admin_client.get(INDEX)

    failed = admin_client.get(link_after(page, "Failed syncs in the last hour"))
    held = admin_client.get(link_after(page, "Held revocations waiting"))
    last_run = admin_client.get(link_after(page, "Last run:"))

    assert list(failed.context["cl"].result_list) == [world["recent_failure"]]
    assert [row.resolution for row in held.context["cl"].result_list] == ["pending"]
    assert last_run.context["original"] == world["run"]


def test_the_next_run_follows_the_full_resyncs_interval(admin_client, db):
    task = PeriodicTask.objects.get(task=TaskName.SYNC_ALL_ADMINS)
    task.last_run_at = timezone.now() - timedelta(seconds=10)
    task.save()
    due = timezone.localtime(task.last_run_at + timedelta(seconds=task.interval.every))

    shown = text_of(admin_client.get(INDEX))

    assert f"Next full resync: {due:%Y-%m-%d %H:%M:%S} UTC" in shown
    task.enabled = False
    task.save()
    assert "none scheduled" in text_of(admin_client.get(INDEX))


def test_times_show_to_the_second_with_their_zone(admin_client, db):
    run = SyncRunFactory()
    started = timezone.localtime(run.started_at)

    shown = text_of(admin_client.get(INDEX))

    assert f"started {started:%Y-%m-%d %H:%M:%S} UTC" in shown


def test_staff_without_the_runs_permission_see_no_panel(client, make_user):
    client.force_login(make_user(is_staff=True))

    shown = text_of(client.get(INDEX))

    assert "La Suite Messages: entitlements" in shown
    assert "Failed syncs" not in shown


def test_no_failed_sync_reads_zero(admin_client, db):
    EntitlementSyncStateFactory(status=EntitlementSyncState.Status.OK)
    assert "Failed syncs in the last hour: 0" in text_of(admin_client.get(INDEX))
