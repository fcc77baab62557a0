"""core/metrics.py: what the sync records and what the scrape reads from shared stores, with
bounded labels; a multiprocess directory that cannot be made names its variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from celery import current_app
from django.conf import settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from core import metrics
from core.models import EntitlementSyncState
from tests.factories import UserFactory
from tests.support import rabbitmq
from tests.support.broker import broker_keys
from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE

NS = "messages_entitlements"


@pytest.fixture
def empty_queues():
    """The suite's broker db with its task queues emptied before and after (a plain client:
    broker_keys names the keys with the run's broker key prefix)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(*broker_keys(client))
    yield
    client.delete(*broker_keys(client))
    client.close()


@pytest.mark.django_db
def test_queue_depths_are_read_from_the_broker(empty_queues):
    for _ in range(3):
        current_app.send_task("metrics.test.nothing", queue=INTERACTIVE_QUEUE)
    current_app.send_task("metrics.test.nothing", queue=BULK_QUEUE)

    values = rendered()

    assert values[(f"{NS}_queue_messages", (("queue", "interactive"),))] == 3
    assert values[(f"{NS}_queue_messages", (("queue", "bulk"),))] == 1


@pytest.mark.django_db
def test_empty_queues_read_zero(empty_queues):
    # Redis keeps no key for an empty queue: the broker says it does not know the queue.
    values = rendered()

    assert values[(f"{NS}_queue_messages", (("queue", "interactive"),))] == 0
    assert values[(f"{NS}_queue_messages", (("queue", "bulk"),))] == 0


@pytest.mark.django_db
def test_queues_rabbitmq_does_not_know_yet_read_zero(monkeypatch, settings):
    if reason := rabbitmq.unavailable_reason():
        pytest.skip(reason)
    database = settings.DATABASES["default"]["NAME"].removeprefix("test_")
    # A vhost without queues: RabbitMQ answers NOT_FOUND and closes the channel it came on.
    monkeypatch.setattr(
        current_app.conf, "broker_url", rabbitmq.fresh_vhost(f"{database}_metrics_test")
    )

    values = rendered()

    assert values[(f"{NS}_queue_messages", (("queue", "interactive"),))] == 0
    assert values[(f"{NS}_queue_messages", (("queue", "bulk"),))] == 0


@pytest.mark.django_db
def test_requests_waiting_for_the_sweep_are_counted():
    waiting, sent = UserFactory(), UserFactory()
    now = timezone.now()
    EntitlementSyncState.objects.create(user=waiting, requested_at=now)
    EntitlementSyncState.objects.create(user=sent, requested_at=now, enqueued_at=now)

    assert rendered()[(f"{NS}_sync_requests_waiting", ())] == 1


@pytest.mark.django_db
def test_a_store_down_leaves_the_other_metrics(monkeypatch):
    # Nothing listens on port 1: the broker is down.
    monkeypatch.setattr(current_app.conf, "broker_url", "redis://127.0.0.1:1/0")

    values = rendered()

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
    assert metrics.QUEUES == (INTERACTIVE_QUEUE, BULK_QUEUE)


def test_the_answer_labels_are_the_answer_kinds():
    from core.entitlements.backends.base import AnswerKind

    assert set(metrics.ANSWERS) == set(AnswerKind)


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


def rendered(*, circuit: str = "closed") -> dict[tuple[str, tuple], float]:
    """The service's metrics as a scrape reads them: (name, labels) -> value."""
    text = metrics.render(read_circuit_state=lambda: circuit).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.django_db
@pytest.mark.parametrize("state", ["closed", "open", "half_open"])
def test_the_circuit_shows_the_state_it_is_read_in(state):
    values = rendered(circuit=state)

    assert {
        labels[0][1]: value
        for (name, labels), value in values.items()
        if name == f"{NS}_circuit_state"
    } == {other: float(other == state) for other in ("closed", "open", "half_open")}
