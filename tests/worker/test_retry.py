"""The retry policy: full jitter under a capped exponential ceiling, a bounded count, and a
start-up check that keeps every countdown under the broker's visibility timeout."""

import os
import statistics
import subprocess
import sys
import time

import pytest

from core.entitlements.circuit_breaker import CircuitBreaker
from worker.retry import circuit_reopens_in, may_retry, retry_countdown


@pytest.mark.parametrize("retries", range(12))
def test_countdown_stays_under_the_capped_exponential_ceiling(settings, retries):
    settings.ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS = 2
    settings.ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS = 120
    ceiling = min(120, 2 * 2**retries)

    draws = [retry_countdown(retries=retries) for _ in range(2000)]

    assert min(draws) < 0.1 * ceiling
    assert max(draws) <= ceiling
    # Full jitter: spread over the whole range, not bunched at the ceiling.
    assert statistics.mean(draws) == pytest.approx(ceiling / 2, rel=0.1)
    assert max(draws) > 0.9 * ceiling


def test_retry_count_is_bounded_by_the_setting(settings):
    settings.ENTITLEMENTS_SYNC_MAX_RETRIES = 3

    assert [may_retry(retries=n) for n in range(5)] == [True, True, True, False, False]


def test_zero_retries_means_none(settings):
    settings.ENTITLEMENTS_SYNC_MAX_RETRIES = 0

    assert not may_retry(retries=0)


def test_a_retry_delay_near_the_visibility_timeout_stops_start_up():
    env = {
        **os.environ,
        "CELERY_VISIBILITY_TIMEOUT": "600",
        "CELERY_TASK_TIME_LIMIT": "200",
        "ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS": "150",
    }

    completed = subprocess.run(
        [sys.executable, "-c", "import messages.settings"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert completed.returncode != 0
    assert "ImproperlyConfigured" in completed.stderr
    assert "ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS" in completed.stderr


@pytest.mark.parametrize("retries", [0, 3])
def test_a_retry_while_the_circuit_is_open_waits_for_it_to_reopen_first(settings, retries):
    settings.ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS = 2
    settings.ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS = 120
    ceiling = 2 * 2**retries

    draws = [retry_countdown(retries=retries, circuit_reopens_in=25.0) for _ in range(2000)]

    # The usual jittered draw, starting when the circuit reopens.
    assert min(draws) >= 25.0
    assert max(draws) <= 25.0 + ceiling
    assert statistics.mean(draws) == pytest.approx(25.0 + ceiling / 2, rel=0.05)


def test_the_wait_for_the_circuit_is_capped_by_the_max_delay(settings):
    """A cool-down longer than the max delay: the countdown stays at most twice the max delay,
    under the visibility timeout the start-up check guards (the retry may be refused again)."""
    settings.ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS = 2
    settings.ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS = 10

    draws = [retry_countdown(retries=8, circuit_reopens_in=300.0) for _ in range(500)]

    assert min(draws) >= 10.0
    assert max(draws) <= 20.0


def test_the_circuit_reopens_in_what_the_shared_breaker_says(settings):
    """Read from the breaker in the test's Redis: closed, open for its cool-down, half-open."""
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = 1
    settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = 2.0
    assert circuit_reopens_in() == 0.0, "closed"

    CircuitBreaker().record_failure()
    reopens_in = circuit_reopens_in()
    # A second of slack for a machine busy with the parallel suite.
    assert 1.0 < reopens_in <= 2.0, "open"

    time.sleep(reopens_in + 0.05)
    assert circuit_reopens_in() == 0.0, "half-open: the next call may probe"


def test_without_a_breaker_to_ask_a_retry_waits_as_usual(settings):
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    }

    assert circuit_reopens_in() == 0.0
