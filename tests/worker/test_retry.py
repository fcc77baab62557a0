"""The retry policy: full jitter under a capped exponential ceiling, a bounded count, and a
start-up check that keeps every countdown under the broker's visibility timeout."""

import os
import statistics
import subprocess
import sys

import pytest

from worker.retry import may_retry, retry_countdown


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
