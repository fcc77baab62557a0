"""The admin's Sync runs page shows the circuit breaker and the rate limit toward the upstream."""

import re

import pytest
from django.core.cache import caches
from django.urls import reverse
from django_redis import get_redis_connection

from core.entitlements.circuit_breaker import CircuitBreaker

THRESHOLD = 3


@pytest.fixture
def guard_settings(settings):
    """A short breaker and a known rate limit; the test's Redis keys deleted after."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = THRESHOLD
    settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = 60.0
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 50.0
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 50
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.2
    prefix = caches["default"].key_prefix
    yield
    connection = get_redis_connection("default")
    for key in connection.scan_iter(f"{prefix}:*"):
        connection.delete(key)


def status_block(admin_client) -> str:
    """The status block of the Sync runs page, whitespace collapsed."""
    response = admin_client.get(reverse("admin:core_syncrun_changelist"))
    assert response.status_code == 200
    block = re.search(r'<div class="module" id="upstream-status">(.*?)</div>', response.text, re.S)
    assert block, "no upstream status on the Sync runs page"
    return " ".join(block.group(1).split())


def test_sync_runs_page_shows_the_circuit_open_after_failures(admin_client, guard_settings):
    shown = status_block(admin_client)
    assert "<strong>closed</strong>: 0 of 3 failures in a row" in shown
    assert "<strong>50.0 per second</strong>, 50.0 of 50 tokens left" in shown

    breaker = CircuitBreaker()
    for _ in range(THRESHOLD):
        breaker.record_failure()

    shown = status_block(admin_client)
    assert re.search(r"<strong>open</strong>: calls refused, reopens in (59|60) s", shown)


def test_sync_runs_page_renders_with_redis_unreachable(admin_client, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    }

    shown = status_block(admin_client)

    assert "<strong>unknown</strong> (Redis unreachable" in shown
