"""Shared fixtures: a clean cache namespace per test, API clients, factories."""

import uuid

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from tests.factories import UserFactory


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


@pytest.fixture
def api_client():
    return APIClient()


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
