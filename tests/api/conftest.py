"""Fixtures of the API tests: a staff client, an administered domain, DeployCenter's client,
a database that fails under a request."""

import pytest
from django.db import connection
from rest_framework.test import APIClient

from core.models import MailDomainAccess
from tests.api.endpoints import PROVISIONING_KEY
from tests.factories import MailDomainAccessFactory
from tests.support.database import kill_database_connection


@pytest.fixture
def staff_client(user, user_client):
    user.is_staff = True
    user.save()
    return user_client


@pytest.fixture
def maildomain(user):
    """A domain that `user` administers (manual access)."""
    return MailDomainAccessFactory(user=user, maildomain__name="admin.example.org").maildomain


@pytest.fixture
def other_access(maildomain):
    return MailDomainAccessFactory(
        maildomain=maildomain,
        user__email="zed@example.org",
        source=MailDomainAccess.Source.ENTITLEMENTS,
    )


@pytest.fixture
def provisioning_key(settings):
    settings.PROVISIONING_API_KEY = PROVISIONING_KEY
    return PROVISIONING_KEY


@pytest.fixture
def deploycenter(db, provisioning_key):
    """A client presenting the right key, with CSRF checks on as a browser would have them."""
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {provisioning_key}")
    return client


@pytest.fixture
def database_killed_once(transactional_db):
    """Yields a function that kills the connection; Django reconnects for the teardown."""
    yield kill_database_connection
    connection.close()
