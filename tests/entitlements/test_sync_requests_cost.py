"""What one login's sync request costs: one SQL statement (prepared once per server session)
whose commit does not wait for the disk, and the task and the `task-sent` event Flower needs
sent through one Redis client.

Against the test PostgreSQL and Redis; docs/performance.md (figure 14) has the times.
"""

import json
import re
import time
from base64 import b64decode

import pytest
import redis
from django.conf import settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from core import compiled_updates
from core.authentication import request_login_sync
from core.models import EntitlementSyncState
from tests.support.broker import broker_key

CLAIMS = {"sub": "s", "email": "someone@example.org"}


@pytest.fixture
def redis_round_trips(monkeypatch):
    """How many times this process sent something to a Redis server (a pipeline sends all
    its commands at once: one round trip), and how many Redis clients it built."""
    counts = {"round_trips": 0, "clients_built": 0}
    send = redis.connection.AbstractConnection.send_packed_command
    build = redis.Redis.__init__

    def counted_send(self, *args, **kwargs):
        counts["round_trips"] += 1
        return send(self, *args, **kwargs)

    def counted_build(self, *args, **kwargs):
        counts["clients_built"] += 1
        return build(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted_send)
    monkeypatch.setattr(redis.Redis, "__init__", counted_build)
    return counts


@pytest.fixture
def task_events():
    """The Celery events published on the broker while the test runs (what Flower reads)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    subscription = client.pubsub()
    subscription.psubscribe(broker_key("*celeryev*"))
    subscription.get_message(timeout=1)  # the psubscribe confirmation

    def received(*, seconds: float = 2.0) -> list[dict]:
        events = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = subscription.get_message(timeout=left)
            if message and message["type"] == "pmessage":
                body = json.loads(message["data"])["body"]
                events.append(json.loads(b64decode(body)))
            elif events:
                return events
        return events

    yield received
    subscription.close()
    client.close()


@pytest.fixture
def fresh_session(transactional_db):
    """A server session holding no prepared statement, as a new connection's."""
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    compiled_updates._prepared.clear()


def test_a_login_is_one_statement_whose_commit_does_not_wait_for_the_disk(
    fresh_session, make_user, broker_queues
):
    user, other = make_user(), make_user()
    EntitlementSyncState.objects.create(user=user)
    EntitlementSyncState.objects.create(user=other)

    with CaptureQueriesContext(connection) as queries:
        receipt = request_login_sync(user=user, claims=CLAIMS)

    assert receipt.task_id is not None
    # The session's first login prepares its UPDATE in the same query (figure 15m).
    [statement] = queries.captured_queries
    assert re.match(
        r'PREPARE (messages_\w+) AS UPDATE "core_entitlementsyncstate" .*; EXECUTE \1\(',
        statement["sql"],
    )
    assert statement["sql"].endswith("; SET LOCAL synchronous_commit TO OFF")
    # The request is recorded and claimed by that one statement, its row count read right.
    state = EntitlementSyncState.objects.get(user=user)
    assert state.enqueued_at == state.requested_at
    assert state.last_trigger == "login"
    # SET LOCAL ended with the statement's own transaction: the session's next commits wait.
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)
    # A second login within the dedup window collapses: the statement's row count is 0 there.
    assert request_login_sync(user=user, claims=CLAIMS).task_id is None
    assert broker_queues.length("interactive") == 1
    # The next logins of the session: the prepared statement only, still one query.
    with CaptureQueriesContext(connection) as queries:
        assert request_login_sync(user=other, claims=CLAIMS).task_id is not None
    [statement] = queries.captured_queries
    assert re.fullmatch(
        r"EXECUTE messages_\w+\([^;]*\); SET LOCAL synchronous_commit TO OFF", statement["sql"]
    )
    assert EntitlementSyncState.objects.get(user=other).last_trigger == "login"


def test_a_login_sends_its_whole_update_when_prepared_updates_are_off(
    fresh_session, make_user, broker_queues, settings
):
    settings.DB_PREPARED_UPDATES = False
    user = make_user()
    EntitlementSyncState.objects.create(user=user)

    with CaptureQueriesContext(connection) as queries:
        assert request_login_sync(user=user, claims=CLAIMS).task_id is not None

    [statement] = queries.captured_queries
    assert statement["sql"].startswith('UPDATE "core_entitlementsyncstate"')
    assert statement["sql"].endswith("; SET LOCAL synchronous_commit TO OFF")


def test_a_login_inside_a_transaction_leaves_its_commit_to_the_caller(
    transactional_db, make_user, broker_queues
):
    user = make_user()
    EntitlementSyncState.objects.create(user=user)

    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        request_login_sync(user=user, claims=CLAIMS)
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            # The caller's transaction may hold other writes: its commit stays durable.
            assert cursor.fetchone() == ("on",)

    assert "synchronous_commit" not in queries.captured_queries[0]["sql"]
    # Inside a transaction the statement is sent whole: a failed EXECUTE could not be retried.
    assert queries.captured_queries[0]["sql"].startswith('UPDATE "core_entitlementsyncstate"')
    assert broker_queues.length("interactive") == 1


def test_a_login_sends_its_task_and_its_event_without_building_a_redis_client(
    transactional_db, make_user, broker_queues, task_events, redis_round_trips
):
    first, user = make_user(), make_user()
    EntitlementSyncState.objects.create(user=first)
    EntitlementSyncState.objects.create(user=user)
    # The first publish of the process connects and declares the queue.
    request_login_sync(user=first, claims=CLAIMS)
    task_events()
    redis_round_trips.update(round_trips=0, clients_built=0)

    receipt = request_login_sync(user=user, claims=CLAIMS)

    # The task, then its event: no Redis client built for either.
    assert redis_round_trips == {"round_trips": 2, "clients_built": 0}
    [message] = broker_queues.messages("interactive")[1:]
    assert message["id"] == receipt.task_id
    # Flower learns of the queued task: its task-sent event follows it.
    [event] = task_events()
    assert event["type"] == "task-sent"
    assert event["uuid"] == receipt.task_id
    assert event["name"] == "entitlements.sync_user"
