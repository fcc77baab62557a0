"""Fixtures of the fault tests: real `celery -A messages worker` subprocesses on the project's
settings (from the environment), the DeployCenter stub over HTTP, users the stub knows, and the
figures each test measures (printed in pytest's summary, quoted in docs/reliability.md)."""

import os
import time
import uuid
from collections import Counter
from contextlib import contextmanager

import pytest
import redis
from celery import current_app
from django.conf import settings
from django.core.cache import cache

from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User
from tests import figures
from tests.deploycenter_stub import ALPHA_SIRET
from tests.support import PrivateRedis, WorkerProcess, worker_environment
from tests.support.broker import broker_keys, producer_app
from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE

ALPHA, BETA, GAMMA, DELTA = (
    "alpha.example.org",
    "beta.example.org",
    "gamma.example.org",
    "delta.example.org",
)
DOMAINS = (ALPHA, BETA, GAMMA, DELTA)

# Settings every test worker starts with unless a test says otherwise: every sync asks the
# stub (no fresh or stale answer hides a change), and retries come quickly.
WORKER_DEFAULTS = {
    "ENTITLEMENTS_CACHE_TIMEOUT_SECONDS": 0,
    "ENTITLEMENTS_STALE_FALLBACK_SECONDS": 0,
    "ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS": 0.2,
    "ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS": 1,
    "LOG_LEVEL": "INFO",
}

_measured: list[str] = []


def fault_seed() -> int:
    """The seed of a test's random draws: FAULTS_SEED replays a run; printed either way."""
    seed = int(os.environ.get("FAULTS_SEED") or time.time())
    print(f"random draws with FAULTS_SEED={seed}")
    return seed


@figures.reporter
def _fault_figures() -> list[str]:
    return list(_measured)


@pytest.fixture
def report_figure():
    """Record one line of measured figures for pytest's summary."""
    return _measured.append


@pytest.fixture
def shared_broker():
    """The suite's Redis db as broker, its task queues and unacked messages emptied before and
    after the test (our own db number, our own keys: nothing else is touched)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(*broker_keys(client))
    yield settings.CELERY_BROKER_URL
    client.delete(*broker_keys(client))
    client.close()


@pytest.fixture
def private_broker(private_redis, settings):
    """The private Redis as broker and cache, for the workers and for this process."""
    private_redis.start()
    with broker_and_cache(private_redis, settings):
        yield private_redis


@contextmanager
def broker_and_cache(server: PrivateRedis, settings):
    """`server` as this process's broker and cache while the block runs."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": server.url},
    }
    cache.close()
    with producer_app(server.url):
        yield
    cache.close()


WRONG_KEY = "a-wrong-service-key-0123456789"


@pytest.fixture
def wrong_key(upstream, settings):
    """The workers send a key DeployCenter does not know: every request is refused (401)."""
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = upstream.backend_parameters(api_key=WRONG_KEY)
    return upstream


@pytest.fixture
def upstream(deploycenter_backend, settings):
    """The DeployCenter stub as the configured upstream of this process and of the workers."""
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 0
    return deploycenter_backend


@pytest.fixture
def start_worker(transactional_db, upstream, shared_broker, tmp_path):
    """Start `celery -A messages worker` subprocesses; each is stopped after the test.

    start(name=, concurrency=, queues=, redis_url=, loglevel=, wait=, **settings) ->
    WorkerProcess. The worker uses the test database, the given Redis (default: the suite's)
    as cache and broker, and WORKER_DEFAULTS overridden by the settings given. With
    wait=False it is only launched: call its wait_ready().
    """
    started: list[WorkerProcess] = []

    def start(
        *,
        name: str | None = None,
        concurrency: int = 1,
        queues: tuple[str, ...] = (INTERACTIVE_QUEUE, BULK_QUEUE),
        redis_url: str | None = None,
        loglevel: str = "INFO",
        wait: bool = True,
        **variables,
    ) -> WorkerProcess:
        name = name or f"w{len(started) + 1}"
        env = worker_environment(
            redis_url=redis_url or shared_broker,
            data_dir=tmp_path,
            **{**WORKER_DEFAULTS, **variables},
        )
        worker = WorkerProcess(
            env=env,
            log_path=tmp_path / f"{name}.log",
            name=name,
            concurrency=concurrency,
            queues=queues,
            loglevel=loglevel,
        )
        started.append(worker)
        return worker.start() if wait else worker.launch()

    yield start
    for worker in started:
        worker.begin_stop()
    for worker in started:
        worker.stop()


@pytest.fixture
def domains(transactional_db):
    """The four mail domains the fault tests grant and revoke."""
    return {name: MailDomain.objects.create(name=name) for name in DOMAINS}


@pytest.fixture
def make_admins(domains, upstream):
    """Create `count` users whose login stored the stub's siret; the stub (the shared one, or
    `stub`) names `upstream_domains` for each; each starts holding `held` (sync-created)
    accesses."""

    def make(
        count: int, *, upstream_domains=(ALPHA, BETA), held=(), prefix="admin", stub=None
    ) -> list:
        token = uuid.uuid4().hex[:8]
        users = User.objects.bulk_create(
            [
                User(email=f"{prefix}-{index}-{token}@example.org", sub=f"{token}-{index}")
                for index in range(count)
            ]
        )
        EntitlementSyncState.objects.bulk_create(
            [
                EntitlementSyncState(user=user, forwarded_claims={"siret": ALPHA_SIRET})
                for user in users
            ]
        )
        MailDomainAccess.objects.bulk_create(
            [
                MailDomainAccess(
                    user=user, maildomain=domains[name], source=MailDomainAccess.Source.ENTITLEMENTS
                )
                for user in users
                for name in held
            ]
        )
        for user in users:
            (stub or upstream).set_admin_domains(user.email, list(upstream_domains))
        return users

    return make


def synced_domains(user) -> set[str]:
    """The domains the sync gave the user."""
    return set(
        MailDomainAccess.objects.filter(
            user=user, source=MailDomainAccess.Source.ENTITLEMENTS
        ).values_list("maildomain__name", flat=True)
    )


def upstream_calls_by_email(stub) -> Counter:
    """How many requests the stub received for each email."""
    return Counter(
        request["query"].get("account_email", [""])[0]
        for request in list(stub.requests)
        if request["path"].endswith("/entitlements/")
    )


def duplicate_access_rows() -> int:
    """(user, domain) pairs held more than once (the unique constraint should make it 0)."""
    pairs = Counter(MailDomainAccess.objects.values_list("user_id", "maildomain_id"))
    return sum(count - 1 for count in pairs.values() if count > 1)


def until_sweeping(predicate):
    """`predicate`, while doing what beat does every minute (every 2 s here): the sweep."""
    last_sweep = 0.0

    def check():
        nonlocal last_sweep
        if time.monotonic() - last_sweep > 2:
            current_app.send_task("entitlements.sweep_pending_syncs")
            last_sweep = time.monotonic()
        return predicate()

    return check
