"""GET /metrics: refused without its token, what it reads from shared stores at scrape time,
bounded labels, and the reset of the multiprocess directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery import current_app
from django.core.management import call_command
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from core import metrics
from core.models import EntitlementSyncState
from tests.factories import UserFactory
from tests.faults.conftest import kombu_keys
from tests.support import rabbitmq
from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE, SIGNALS_QUEUE

TOKEN = "a-metrics-token"
NS = "messages_entitlements"


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.DEBUG = False
    return TOKEN


def scraped(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


@pytest.mark.django_db
def test_refused_outside_debug_when_no_token_is_set(client, settings):
    settings.METRICS_TOKEN = ""
    settings.DEBUG = False

    response = client.get("/metrics")

    assert response.status_code == 403
    assert "METRICS_TOKEN" in response.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer wrong-token", f"Basic {TOKEN}", f"bearer {TOKEN}", f"Bearer {TOKEN}x"],
)
def test_refused_without_the_right_bearer_token(client, token, authorization):
    response = client.get("/metrics", HTTP_AUTHORIZATION=authorization)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.django_db
def test_served_with_the_token_as_prometheus_text(client, token):
    response = client.get("/metrics/", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_open_in_debug_without_a_token(client, settings):
    settings.METRICS_TOKEN = ""
    settings.DEBUG = True

    assert client.get("/metrics").status_code == 200


@pytest.mark.django_db
def test_only_get(client, token):
    response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 405


@pytest.fixture
def empty_queues():
    """The suite's broker db with its task queues emptied before and after."""
    with current_app.connection_for_write() as connection:
        client = connection.default_channel.client
        client.delete(*kombu_keys(client))
        yield
        client.delete(*kombu_keys(client))


@pytest.mark.django_db
def test_queue_depths_are_read_from_the_broker(client, token, empty_queues):
    for _ in range(3):
        current_app.send_task("metrics.test.nothing", queue=INTERACTIVE_QUEUE)
    current_app.send_task("metrics.test.nothing", queue=BULK_QUEUE)

    values = scraped(client)

    assert values[(f"{NS}_queue_messages", (("queue", "interactive"),))] == 3
    assert values[(f"{NS}_queue_messages", (("queue", "bulk"),))] == 1


@pytest.mark.django_db
def test_empty_queues_read_zero(client, token, empty_queues):
    # Redis keeps no key for an empty queue: the broker says it does not know the queue.
    values = scraped(client)

    assert values[(f"{NS}_queue_messages", (("queue", "interactive"),))] == 0
    assert values[(f"{NS}_queue_messages", (("queue", "bulk"),))] == 0


@pytest.mark.django_db
def test_queues_rabbitmq_does_not_know_yet_read_zero(client, token, monkeypatch, settings):
    if reason := rabbitmq.unavailable_reason():
        pytest.skip(reason)
    database = settings.DATABASES["default"]["NAME"].removeprefix("test_")
    # A vhost without queues: RabbitMQ answers NOT_FOUND and closes the channel it came on.
    monkeypatch.setattr(
        current_app.conf, "broker_url", rabbitmq.fresh_vhost(f"{database}_metrics_test")
    )

    values = scraped(client)

    assert values[(f"{NS}_queue_messages", (("queue", "interactive"),))] == 0
    assert values[(f"{NS}_queue_messages", (("queue", "bulk"),))] == 0


@pytest.mark.django_db
def test_requests_waiting_for_the_sweep_are_counted(client, token):
    waiting, sent = UserFactory(), UserFactory()
    now = timezone.now()
    EntitlementSyncState.objects.create(user=waiting, requested_at=now)
    EntitlementSyncState.objects.create(user=sent, requested_at=now, enqueued_at=now)

    assert scraped(client)[(f"{NS}_sync_requests_waiting", ())] == 1


@pytest.mark.django_db
def test_a_store_down_leaves_the_other_metrics(client, token, monkeypatch):
    # Nothing listens on port 1: the broker is down.
    monkeypatch.setattr(current_app.conf, "broker_url", "redis://127.0.0.1:1/0")

    values = scraped(client)

    assert not any(name == f"{NS}_queue_messages" for name, _ in values)
    assert (f"{NS}_sync_requests_waiting", ()) in values


def test_a_label_value_outside_its_set_is_recorded_as_other():
    other = metrics.SYNCS.labels("other", "ok")
    before = other._value.get()

    metrics.sync_ended(trigger="jane.doe@example.org", status="ok")

    assert other._value.get() == before + 1
    labels = {sample.labels["trigger"] for sample in metrics.SYNCS.collect()[0].samples}
    assert not any("@" in label for label in labels)


def test_the_queues_are_the_workers():
    assert metrics.QUEUES == (INTERACTIVE_QUEUE, BULK_QUEUE, SIGNALS_QUEUE)


def test_the_answer_labels_are_the_answer_kinds():
    from core.entitlements.backends.base import AnswerKind

    assert set(metrics.ANSWERS) == set(AnswerKind)


def test_reset_metrics_deletes_only_the_metric_files(tmp_path, settings):
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
    (tmp_path / "counter_123.db").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("kept")

    call_command("reset_metrics")

    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_a_directory_that_cannot_be_made_names_its_variable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    completed = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); import core.metrics"],
        cwd=Path(__file__).resolve().parents[1],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "messages.settings",
            "DJANGO_SECRET_KEY": "test-secret",
            "DATA_DIR": str(tmp_path),
            "PROMETHEUS_MULTIPROC_DIR": str(blocker / "metrics"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode != 0
    assert "ImproperlyConfigured: PROMETHEUS_MULTIPROC_DIR: cannot create" in completed.stderr
