"""core/metrics_scrape.py: what a scrape reads from shared stores (queue depths, requests
waiting, the circuit's state), each reading apart from the others."""

import pytest
import redis
from celery import current_app
from django.conf import settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from core import metrics_scrape
from core.models import EntitlementSyncState
from tests.factories import UserFactory
from tests.support import rabbitmq
from tests.support.broker import broker_keys
from tests.support.names import own_name
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
    vhost = own_name("metrics_test")
    # A vhost without queues: RabbitMQ answers NOT_FOUND and closes the channel it came on.
    monkeypatch.setattr(current_app.conf, "broker_url", rabbitmq.fresh_vhost(vhost))
    # The settings' transport is Redis's own (messages/redis_broker.py): AMQP takes its URL's.
    monkeypatch.setitem(current_app.conf, "broker_transport", None)

    try:
        values = rendered()
    finally:
        rabbitmq.delete_vhost(vhost)

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


def rendered(*, circuit: str = "closed") -> dict[tuple[str, tuple], float]:
    """The service's metrics as a scrape reads them: (name, labels) -> value."""
    text = metrics_scrape.render(read_circuit_state=lambda: circuit).decode()
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
