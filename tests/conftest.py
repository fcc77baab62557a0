"""The suite's shared fixtures: a clean cache namespace per test, API clients, users and domains,
the broker's queues and an in-process worker, the scripted upstream, the fake OIDC provider; and
the `broker` marker on every test that needs a Celery broker or worker (tests/faults/conftest.py
adds the fault suite's own)."""

import uuid

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient

import worker.tasks as _worker_tasks  # noqa: F401 - see below
from core.entitlements.revocation_budget import RunRevocationBudget
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, SyncRun, User
from tests import artifacts, figures
from tests.deploycenter_stub import DeployCenterStub
from tests.factories import UserFactory
from tests.support import PrivateRedis
from tests.support.broker import QUEUES, BrokerQueues, broker_key, broker_keys
from tests.support.flower import CREDENTIALS, running_flower
from tests.support.oidc_provider import FakeProvider
from tests.support.revocations import reconcile

# worker.tasks is imported here, once, before any test app exists: celery's testing helpers
# restore the global list of shared-task finalizers after each test app, so tasks first
# imported inside one test would be missing from every later test app.

DEPLOYCENTER_BACKEND = "core.entitlements.backends.deploycenter.DeployCenterEntitlementsBackend"
ALPHA, BETA = "alpha.example.org", "beta.example.org"

# A test that uses one of these fixtures needs the Celery broker (the test Redis) or a worker.
BROKER_FIXTURES = {
    "broker_queues",
    "celery_worker",
    "worker",
    "flower",
    "start_worker",
    "shared_broker",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Mark `broker` every test that uses a broker fixture (before `-m` selects), so the mark
    follows the fixtures and cannot drift; a test that starts a worker process itself carries
    the mark in its own code."""
    for item in items:
        if BROKER_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.broker)


# Every cache key of this run starts with it: the run's keys are removed at its end.
RUN_CACHE_PREFIX = f"test-{uuid.uuid4().hex[:12]}-"


@pytest.fixture(scope="session", autouse=True)
def _shared_redis_left_clean():
    """At the end of the run, remove what it left on the shared Redis: its cache keys, and the
    broker's keys behind the run's CELERY_BROKER_KEY_PREFIX (or the suite's own queue keys
    without one). Nothing else on the server is touched."""
    yield
    if not django_settings.REDIS_URL:
        return
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{RUN_CACHE_PREFIX}*", count=1000))
        prefix = broker_key("")
        keys += client.scan_iter(match=f"{prefix}*") if prefix else broker_keys(client)
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _isolated_cache(settings):
    """Give each test its own cache key prefix, so tests never see each other's keys and
    nothing on the shared Redis has to be flushed."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            **settings.CACHES["default"],
            "KEY_PREFIX": RUN_CACHE_PREFIX + uuid.uuid4().hex,
        },
    }
    cache.close()
    yield
    cache.close()


@pytest.fixture(scope="session")
def _empty_static_root(tmp_path_factory):
    return tmp_path_factory.mktemp("static")


@pytest.fixture(autouse=True)
def _static_files_without_collectstatic(settings, _empty_static_root):
    """In-process tests render pages without a `collectstatic` first: the plain storage needs no
    manifest, and WhiteNoise gets an existing, empty STATIC_ROOT. The production set-up
    (collectstatic, hashed names, WhiteNoise) is checked by tests/admin/test_browser.py."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.STATIC_ROOT = _empty_static_root


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture(scope="session")
def _deploycenter_stub_server():
    """One stub server for the whole run; tests share it through `deploycenter_stub`."""
    with DeployCenterStub() as stub:
        yield stub


@pytest.fixture
def deploycenter_stub(_deploycenter_stub_server):
    """The local DeployCenter over real HTTP, reset to its default accounts for each test."""
    _deploycenter_stub_server.reset()
    yield _deploycenter_stub_server
    _deploycenter_stub_server.reset()


@pytest.fixture
def deploycenter_backend(settings, deploycenter_stub):
    """Configure the DeployCenter backend against the stub; returns the stub."""
    settings.ENTITLEMENTS_BACKEND = DEPLOYCENTER_BACKEND
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = deploycenter_stub.backend_parameters()
    return deploycenter_stub


@pytest.fixture
def private_redis(tmp_path):
    """A throwaway redis-server a test may stop and start (not started yet); stopped after."""
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def user(db):
    """A plain user: no staff flag, no access."""
    return UserFactory()


@pytest.fixture
def user_client(user):
    """An API client logged in (session) as `user`."""
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def broker_queues():
    """The test Redis's broker queues, emptied before and after the test (only our queue
    keys on our own db number: nothing else on the shared server is touched)."""
    queues = BrokerQueues(django_settings.CELERY_BROKER_URL)
    queues.clear()
    yield queues
    queues.clear()
    queues.client.close()


@pytest.fixture
def make_user(db):
    """`make(**fields)`: a user with a unique e-mail and `sub` unless given."""

    def make(**fields) -> User:
        token = uuid.uuid4().hex[:12]
        fields.setdefault("email", f"user-{token}@example.org")
        fields.setdefault("sub", f"sub-{token}")
        return User.objects.create_user(**fields)

    return make


@pytest.fixture(scope="session")
def celery_config():
    """The test app gets the project's own Celery settings (acks_late, routes, results in
    the database...), on the test Redis."""
    return {
        name.removeprefix("CELERY_").lower(): value
        for name, value in vars(django_settings._wrapped).items()
        if name.startswith("CELERY_")
    }


@pytest.fixture(scope="session")
def celery_worker_parameters():
    return {"queues": QUEUES}


@pytest.fixture
def scripted_upstream(settings):
    """Point the engine at the scripted backend; call it again to change the answers."""
    from tests.support.scripted_backend import SCRIPTED_BACKEND

    settings.ENTITLEMENTS_BACKEND = SCRIPTED_BACKEND
    # Every sync asks the upstream: no fresh answer, no stale stand-in.
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 0

    def script(*, admins_by_email=None, unavailable_emails=(), claims=(), latency_seconds=0.0):
        settings.ENTITLEMENTS_BACKEND_PARAMETERS = {
            "admins_by_email": admins_by_email or {},
            "unavailable_emails": list(unavailable_emails),
            "claims": list(claims),
            "latency_seconds": latency_seconds,
        }

    script()
    return script


@pytest.fixture
def provider(settings):
    """The fake OIDC provider (tests/support/oidc_provider.py), configured in the settings."""
    return FakeProvider(settings)


@pytest.fixture
def worker(transactional_db, celery_worker, celery_app, depends_on_current_app, broker_queues):
    """A running in-process worker; tasks are sent through the test app, results read from it."""
    return celery_app


@pytest.fixture
def domains(transactional_db):
    """The mail domains alpha.example.org and beta.example.org, by name."""
    return {name: MailDomain.objects.create(name=name) for name in (ALPHA, BETA)}


@pytest.fixture
def make_synced_admins(domains):
    """`make(count, names=(alpha,), source=entitlements)`: users holding accesses on `names`,
    with a last answer that named them."""

    def make(
        count: int, *, names=(ALPHA,), source=MailDomainAccess.Source.ENTITLEMENTS
    ) -> list[User]:
        batch = uuid.uuid4().hex[:8]
        users = User.objects.bulk_create(
            User(email=f"admin-{batch}-{number}@example.org", sub=f"{batch}-{number}", password="!")
            for number in range(count)
        )
        MailDomainAccess.objects.bulk_create(
            MailDomainAccess(user=user, maildomain=domains[name], source=source)
            for user in users
            for name in names
        )
        EntitlementSyncState.objects.bulk_create(
            EntitlementSyncState(user=user, status="ok", entitled_domains=list(names))
            for user in users
        )
        return users

    return make


@pytest.fixture
def fast_password_hasher(settings):
    """Log users in without the slow production hasher (for the admin pages' tests)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def superuser_client(transactional_db, admin_client):
    """The admin client of pytest-django, its superuser in a transactional test."""
    return admin_client


@pytest.fixture
def staff_client(transactional_db, make_user):
    """`make(*permissions)`: a client logged in as a staff user (not superuser) with the view
    permissions of the admin's pages and the given ones."""

    def make(*codenames: str) -> Client:
        staff = make_user(is_staff=True)
        views = ["view_user", "view_maildomain", "view_syncrun", "view_heldrevocation"]
        staff.user_permissions.set(Permission.objects.filter(codename__in=[*views, *codenames]))
        client = Client()
        client.force_login(staff)
        return client

    return make


@pytest.fixture
def held(domains, make_user):
    """A run that held the revocation of alpha for three users (for the admin's pages); the first
    has since been told alpha again by a login sync."""
    users = [make_user() for _ in range(3)]
    for user in users:
        MailDomainAccess.objects.create(
            user=user, maildomain=domains[ALPHA], source=MailDomainAccess.Source.ENTITLEMENTS
        )
    run = SyncRun.objects.create(trigger="periodic", revoke_budget=0)
    guard = RunRevocationBudget(run_id=run.pk)
    for user in users:
        reconcile(user, guard=guard)
    EntitlementSyncState.objects.filter(user=users[0]).update(entitled_domains=[ALPHA])
    return {"run": run, "users": users}


@pytest.fixture
def flower():
    """Flower started by `manage.py run_flower` behind basic auth (CREDENTIALS); yields its URL."""
    with running_flower(FLOWER_BASIC_AUTH=":".join(CREDENTIALS)) as url:
        yield url


# What the pytest-xdist workers measured and kept, gathered by the controller as each worker ends
# (the controller runs no test: its own figures and artefacts are empty).
_from_workers: dict[str, list[str]] = {"figures": [], "artefacts": []}


def pytest_sessionfinish(session):
    """In a pytest-xdist worker: hand this worker's figures and artefacts to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["figures"] = figures.lines()
        workeroutput["artefacts"] = artifacts.lines()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """In the pytest-xdist controller: keep what the worker that ended handed over."""
    output = getattr(node, "workeroutput", {})
    _from_workers["figures"].extend(output.get("figures", ()))
    # Two workers may keep files in the same place (the admin's screenshots): listed once.
    kept = _from_workers["artefacts"]
    kept.extend(line for line in output.get("artefacts", ()) if line not in kept)


def pytest_terminal_summary(terminalreporter):
    """Show the figures measured by the tests that ran (docs/reliability.md quotes them) and
    where the artefacts they kept are (with pytest-xdist: those every worker handed over)."""
    measured = figures.lines() + _from_workers["figures"]
    if measured:
        terminalreporter.section("figures")
        for line in measured:
            terminalreporter.write_line(line)
    kept = artifacts.lines() + _from_workers["artefacts"]
    if kept:
        terminalreporter.section("artefacts")
        for line in kept:
            terminalreporter.write_line(line)
