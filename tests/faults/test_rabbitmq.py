"""RabbitMQ as the broker: the end-to-end sync of the worker suite, through real
`celery -A messages worker` subprocesses whose CELERY_BROKER_URL is amqp://, as on Redis.

A login lands its rights; a full run (interactive and bulk workers as the Procfile ships them)
syncs every admin; a pool child killed mid-sync and a whole worker killed mid-sync both see their
syncs redelivered and reconciled exactly once. Redis stays the cache (locks, answers). On
RabbitMQ a lost worker's messages come back as soon as its connection drops: no visibility
timeout to wait for (docs/operations.md, "RabbitMQ").
"""

import random
from functools import partial

import pytest
import redis
from django.conf import settings

from bench.layout import shipped_workers
from core.entitlements.sync_requests import request_resync
from core.models import EntitlementSyncState, SyncRun, Trigger, User
from tests.deploycenter_stub import ALPHA_SIRET
from tests.faults.conftest import ALPHA, BETA, GAMMA, duplicate_access_rows, synced_domains
from tests.faults.test_worker_kills import (
    PHASES,
    UPSTREAM_LATENCY,
    WHOLE_WORKER_SETTINGS,
    assert_reconciled_exactly_once,
    kill_child_mid_sync,
    kill_whole_worker_round,
)
from tests.support import rabbitmq, wait_until
from tests.support.broker import broker_key, producer_app
from tests.support.names import own_name
from tests.support.oidc_provider import FakeProvider
from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.skipif(
        (reason := rabbitmq.unavailable_reason()) is not None, reason=reason or "available"
    ),
]


@pytest.fixture(scope="session")
def rabbitmq_vhost():
    """The suite's own vhost, named after its database and xdist worker (e.g.
    messages_ci_gw0_test), created anew, deleted at the end of the run."""
    name = own_name("test")
    yield rabbitmq.fresh_vhost(name)
    rabbitmq.delete_vhost(name)


@pytest.fixture
def amqp_broker(rabbitmq_vhost, shared_broker):
    """RabbitMQ as this process's broker (its task queues emptied before and after); Redis
    stays the cache. Returns the broker URL to give the workers."""
    rabbitmq.purge(rabbitmq_vhost, (INTERACTIVE_QUEUE, BULK_QUEUE))
    with producer_app(rabbitmq_vhost):
        yield rabbitmq_vhost
    rabbitmq.purge(rabbitmq_vhost, (INTERACTIVE_QUEUE, BULK_QUEUE))


@pytest.fixture
def start_amqp_worker(start_worker, amqp_broker):
    """start_worker (tests/faults/conftest.py) with the workers on RabbitMQ."""
    return partial(start_worker, CELERY_BROKER_URL=amqp_broker)


def assert_nothing_went_through_redis() -> None:
    """The suite's Redis (the cache here) never held a task message."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        queued = [client.llen(broker_key(queue)) for queue in (INTERACTIVE_QUEUE, BULK_QUEUE)]
        assert queued == [0, 0]
        assert not client.exists(broker_key("unacked"))
    finally:
        client.close()


def test_a_login_lands_its_rights_through_a_worker_on_rabbitmq(
    start_amqp_worker, upstream, domains, settings, amqp_broker
):
    worker = start_amqp_worker()
    email = "rabbit@example.org"
    upstream.set_admin_domains(email, [ALPHA, BETA])

    browser = FakeProvider(settings).login(
        {"sub": "sub-rabbit", "email": email, "siret": ALPHA_SIRET}
    )

    assert "_auth_user_id" in browser.session
    user = User.objects.get(email=email)
    wait_until(lambda: synced_domains(user) == {ALPHA, BETA}, message="the login's sync")
    state = EntitlementSyncState.objects.get(user=user)
    assert (state.status, state.last_trigger) == ("ok", "login")
    # The worker really consumed from RabbitMQ, in the suite's vhost.
    vhost = amqp_broker.rsplit("/", 1)[1]
    assert f"amqp://guest:**@127.0.0.1:5672/{vhost}" in worker.log()
    assert_nothing_went_through_redis()


def test_a_full_run_syncs_every_admin_with_the_shipped_workers_on_rabbitmq(
    start_amqp_worker, make_admins, upstream
):
    for spec in shipped_workers(environ={}):
        start_amqp_worker(
            name=spec.name,
            queues=spec.queues,
            concurrency=spec.concurrency,
            # Several bulk messages, so the fan-out really goes through the broker.
            ENTITLEMENTS_SYNC_BATCH_SIZE=7,
            # Every user loses GAMMA on purpose: the blast-radius guard would hold most of it.
            ENTITLEMENTS_MAX_REVOKE_SHARE=1,
        )
    users = make_admins(30, upstream_domains=(ALPHA, BETA), held=(GAMMA,))

    request_resync(trigger=Trigger.ADMIN)

    run = wait_until(
        lambda: SyncRun.objects.filter(status=SyncRun.Status.DONE).first(),
        timeout=60,
        message="the full run to finish",
    )
    assert (run.users_enqueued, run.users_done, run.users_failed) == (30, 30, 0)
    assert all(synced_domains(user) == {ALPHA, BETA} for user in users)
    assert duplicate_access_rows() == 0
    assert_nothing_went_through_redis()


@pytest.mark.long
def test_a_pool_child_killed_mid_sync_is_redelivered_on_rabbitmq(
    start_amqp_worker, make_admins, upstream, report_figure
):
    upstream.latency = UPSTREAM_LATENCY
    rng = random.Random(12)
    worker = start_amqp_worker(concurrency=1)
    users = make_admins(len(PHASES), held=(GAMMA,))

    outcomes = [
        kill_child_mid_sync(
            worker, upstream, user=user, phase=phase, delay=rng.uniform(0, UPSTREAM_LATENCY / 2)
        )
        for user, phase in zip(users, PHASES, strict=True)
    ]

    assert_reconciled_exactly_once(users, [outcome["task_id"] for outcome in outcomes])
    recovery = max(outcome["recovered_in"] for outcome in outcomes)
    report_figure(
        f"faults/rabbitmq: pool child killed {len(PHASES)} times (one per phase), "
        f"{len(users)}/{len(users)} syncs redelivered and reconciled once, max {recovery:.2f} s"
    )


def test_a_whole_worker_killed_mid_sync_is_redelivered_at_once_on_rabbitmq(
    start_amqp_worker, make_admins, upstream, report_figure
):
    upstream.latency = UPSTREAM_LATENCY

    outcome = kill_whole_worker_round(
        start_amqp_worker, make_admins, upstream, random.Random(12), round_number=0
    )

    assert_reconciled_exactly_once(outcome["users"], outcome["task_ids"])
    # On Redis the same messages wait for the visibility timeout (60 s in these settings, so at
    # least 60 s there); here only for the replacement worker to start.
    assert outcome["recovered_in"] < WHOLE_WORKER_SETTINGS["CELERY_VISIBILITY_TIMEOUT"], outcome
    report_figure(
        f"faults/rabbitmq: whole worker killed, {len(outcome['users'])}/{len(outcome['users'])} "
        f"interrupted syncs redelivered and reconciled once {outcome['recovered_in']:.0f} s "
        "after the kill (a replacement worker's start included)"
    )
