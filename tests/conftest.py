"""Shared fixtures: a clean cache namespace per test, API clients, factories."""

import uuid

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from tests import artifacts, figures
from tests.deploycenter_stub import DeployCenterStub
from tests.factories import UserFactory
from tests.support import PrivateRedis

DEPLOYCENTER_BACKEND = "core.entitlements.backends.deploycenter.DeployCenterEntitlementsBackend"


@pytest.fixture(autouse=True)
def _isolated_cache(settings):
    """Give each test its own cache key prefix, so tests never see each other's keys and
    nothing on the shared Redis has to be flushed."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex}"},
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
    (collectstatic, hashed names, WhiteNoise) is checked by tests/test_admin_browser.py."""
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


def pytest_terminal_summary(terminalreporter):
    """Show the figures measured by the tests that ran (docs/reliability.md quotes them) and
    where the artefacts they kept are."""
    measured = figures.lines()
    if measured:
        terminalreporter.section("figures")
        for line in measured:
            terminalreporter.write_line(line)
    kept = artifacts.lines()
    if kept:
        terminalreporter.section("artefacts")
        for line in kept:
            terminalreporter.write_line(line)
