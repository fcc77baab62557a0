"""core/entitlements/configuration_errors.py: a wrong configuration is one ERROR per run it
stops, and one per episode for other syncs, shared through the cache by every process."""

import logging

import pytest
from django.core.cache import cache

from core.entitlements.configuration_errors import (
    _EPISODE_KEY,
    EPISODE_SECONDS,
    report_configuration_error,
    report_run_stopped,
    what_to_check,
)

LOGGER = "core.entitlements.configuration_errors"


def _errors(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR
    ]


def test_the_operator_is_told_what_to_check_and_never_a_value():
    assert what_to_check("http_401") == (
        "the entitlements service refused our request (http_401): check "
        "ENTITLEMENTS_BACKEND_PARAMETERS: api_key and service_id (HTTP 401/403), "
        "base_url (any other status)"
    )


def test_per_user_syncs_report_once_per_episode(caplog):
    for _ in range(3):
        report_configuration_error(error_code="http_403")

    assert _errors(caplog) == [
        f"entitlements sync: {what_to_check('http_403')} (reported once per "
        f"{EPISODE_SECONDS} s while it lasts; each sync logs a warning)"
    ]


def test_a_stopped_run_always_reports_and_opens_the_episode(caplog):
    report_run_stopped(run_id=12, error_code="http_401")
    report_run_stopped(run_id=13, error_code="http_401")
    report_configuration_error(error_code="http_401")

    assert _errors(caplog) == [
        f"resync run 12 stopped: {what_to_check('http_401')}",
        f"resync run 13 stopped: {what_to_check('http_401')}",
    ]


def test_an_episode_that_ended_is_reported_again(caplog):
    report_configuration_error(error_code="http_403")
    # The window's end, as the key's expiry would bring it.
    cache.delete(_EPISODE_KEY)
    report_configuration_error(error_code="http_403")

    assert len(_errors(caplog)) == 2


@pytest.fixture
def unreachable_cache(settings):
    """The Django cache pointed at a port where nothing listens."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            **settings.CACHES["default"],
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        },
    }


def test_without_the_cache_every_sync_reports(unreachable_cache, caplog):
    report_configuration_error(error_code="http_403")
    report_configuration_error(error_code="http_403")

    assert len(_errors(caplog)) == 2
    assert "cache unreachable: reporting window" in caplog.text
