"""The guard the engine asks each upstream request through: breaker and rate limit together,
the outcome it is told, behaviour without Redis, the operators' view and the settings."""

import json
import logging
import runpy
import time

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django_redis import get_redis_connection

import messages.settings
from core.entitlements import upstream_guard
from core.entitlements.circuit_breaker import CircuitBreaker
from core.entitlements.rate_limit import get_rate_limiter
from core.entitlements.upstream_guard import Priority, admit_upstream_call, upstream_status

THRESHOLD = 3
COOLDOWN = 0.4


@pytest.fixture
def guard(settings):
    """Short breaker timings and a roomy rate limit; the test's Redis keys deleted after."""
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = THRESHOLD
    settings.ENTITLEMENTS_CIRCUIT_WINDOW_SECONDS = 10.0
    settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = COOLDOWN
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 1000.0
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 100
    prefix = caches["default"].key_prefix
    yield
    connection = get_redis_connection("default")
    for key in connection.scan_iter(f"{prefix}:*"):
        connection.delete(key)


def call(
    *, available: bool = True, calls: list | None = None, priority: Priority = Priority.BULK
) -> str:
    """One upstream call through the guard, told `available`; why it was refused, if it was."""
    with admit_upstream_call(priority=priority) as upstream:
        if upstream.refused:
            return upstream.refused
        if calls is not None:
            calls.append(1)
        upstream.record(available=available)
    return ""


def open_then_wait_for_half_open() -> None:
    for _ in range(THRESHOLD):
        assert call(available=False) == ""
    time.sleep(COOLDOWN + 0.05)


def test_transient_failures_open_the_circuit_and_later_calls_fail_fast(guard):
    calls = []
    for _ in range(THRESHOLD):
        call(available=False, calls=calls)

    started = time.monotonic()
    refused = call(calls=calls)

    assert time.monotonic() - started < 0.05
    assert len(calls) == THRESHOLD  # the refused call never reached the upstream
    assert refused == "circuit_open"
    assert 0 < CircuitBreaker().state()["reopens_in"] <= COOLDOWN


def test_calls_resume_by_themselves_when_the_upstream_is_back(guard):
    open_then_wait_for_half_open()
    calls = []

    for _ in range(5):
        call(calls=calls)

    assert len(calls) == 5
    assert CircuitBreaker().state()["state"] == "closed"


def test_a_failed_probe_reopens_the_circuit(guard):
    open_then_wait_for_half_open()

    assert call(available=False) == ""

    assert CircuitBreaker().state()["state"] == "open"
    assert call() == "circuit_open"


def test_a_rate_limit_timeout_gives_the_probe_back(guard, settings, monkeypatch):
    open_then_wait_for_half_open()
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0.5
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 1
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.0
    assert get_rate_limiter().acquire(priority=Priority.INTERACTIVE, timeout=0)
    # A bulk caller waits 30 s for a token in production: 0.1 s here.
    monkeypatch.setitem(upstream_guard._MAX_WAIT_SECONDS, Priority.BULK, 0.1)

    assert call() == "rate_limited"

    assert CircuitBreaker().allow().probe_token  # not held by the caller that gave up


def test_an_interrupted_call_gives_the_probe_back(guard):
    open_then_wait_for_half_open()

    with pytest.raises(KeyboardInterrupt), admit_upstream_call(priority=Priority.BULK) as probe:
        assert probe.admission.probe_token
        raise KeyboardInterrupt  # the worker shuts down before the upstream answered

    assert CircuitBreaker().state()["state"] == "half_open"
    assert CircuitBreaker().allow().probe_token


def test_calls_go_through_when_redis_is_unreachable(settings, caplog):
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    }
    calls = []

    with caplog.at_level(logging.WARNING):
        assert call(available=False, calls=calls) == ""
        assert call(calls=calls) == ""

    assert len(calls) == 2
    assert "unreachable in Redis; calling anyway" in caplog.text
    assert upstream_status()["error"] == "redis_unreachable"


def test_without_a_redis_cache_calls_go_through_unguarded_with_one_warning(
    settings, tmp_path, caplog
):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(tmp_path),
            "KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
        }
    }
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = THRESHOLD
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0.5
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 1
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.0
    upstream_guard._warn_unguarded.cache_clear()  # once per process: start this test afresh
    calls = []

    with caplog.at_level(logging.WARNING):
        for _ in range(THRESHOLD + 2):
            assert call(available=False, calls=calls) == ""
        assert call(calls=calls) == ""

    assert len(calls) == THRESHOLD + 3  # neither the breaker nor the rate limit stopped one
    unguarded = [r for r in caplog.records if "calls are not guarded" in r.getMessage()]
    assert len(unguarded) == 1
    assert unguarded[0].levelno == logging.WARNING
    assert upstream_status() == {
        "circuit": {"state": "off"},
        "rate_limit": {"enabled": False},
        "error": "no_redis_cache",
    }


def test_operators_see_the_circuit_and_the_bucket(guard, settings):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 1.0  # the schedule barely moves meanwhile
    for _ in range(THRESHOLD):
        # Logins go at once, each moving the schedule one second ahead.
        call(available=False, priority=Priority.INTERACTIVE)

    state = json.loads(json.dumps(upstream_status()))

    assert state["circuit"]["state"] == "open"
    assert state["circuit"]["failure_threshold"] == THRESHOLD
    assert state["circuit"]["reopens_at"].endswith("+00:00")
    assert 0 < state["circuit"]["reopens_in"] <= COOLDOWN
    assert state["rate_limit"]["enabled"] is True
    assert state["rate_limit"]["per_second"] == 1.0
    assert state["rate_limit"]["tokens"] == pytest.approx(100 - THRESHOLD, abs=1)
    assert state["rate_limit"]["booked_ahead_seconds"] == pytest.approx(THRESHOLD, abs=1)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ENTITLEMENTS_RATE_LIMIT_PER_SECOND", "fast", "must be a number"),
        ("ENTITLEMENTS_RATE_LIMIT_PER_SECOND", "-1", "must be at least 0.0"),
        ("ENTITLEMENTS_RATE_LIMIT_BURST", "0", "must be at least 1"),
        ("ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE", "1", "leave at least one token"),
        ("ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD", "0", "must be at least 1"),
        ("ENTITLEMENTS_CIRCUIT_WINDOW_SECONDS", "soon", "must be a number"),
        ("ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS", "0", "must be at least 0.1"),
    ],
)
def test_a_wrong_setting_stops_start_up_naming_the_variable(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)

    with pytest.raises(ImproperlyConfigured, match=message) as error:
        runpy.run_path(messages.settings.__file__)

    assert variable in str(error.value)
