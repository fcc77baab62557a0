"""The door the engine calls around each upstream request: breaker and rate limit together,
outcome recording, behaviour without Redis, the operators' view and the settings."""

import json
import logging
import runpy
import time

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django_redis import get_redis_connection

import messages.settings
from core.entitlements.upstream_guard import (
    CircuitOpenError,
    Priority,
    RateLimitTimeoutError,
    get_circuit_breaker,
    get_rate_limiter,
    guarded_upstream_call,
    upstream_guard_state,
)

THRESHOLD = 3
COOLDOWN = 0.4


class UpstreamDown(Exception):
    """Stands for the engine's EntitlementsUnavailableError (5xx, 429, timeout)."""


class UpstreamRefused(Exception):
    """Stands for a non-transient answer such as a 401 or a malformed body."""


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


def call(*, outcome: BaseException | None = None, calls: list | None = None, **options) -> None:
    """One guarded upstream call whose body fails with `outcome`, if given."""
    options = {"priority": Priority.BULK, "transient": (UpstreamDown,), **options}
    with guarded_upstream_call(**options):
        if calls is not None:
            calls.append(1)
        if outcome is not None:
            raise outcome


def open_then_wait_for_half_open() -> None:
    for _ in range(THRESHOLD):
        with pytest.raises(UpstreamDown):
            call(outcome=UpstreamDown())
    time.sleep(COOLDOWN + 0.05)


def test_transient_failures_open_the_circuit_and_later_calls_fail_fast(guard):
    calls = []
    for _ in range(THRESHOLD):
        with pytest.raises(UpstreamDown):
            call(outcome=UpstreamDown(), calls=calls)

    started = time.monotonic()
    with pytest.raises(CircuitOpenError) as refused:
        call(calls=calls)

    assert time.monotonic() - started < 0.05
    assert len(calls) == THRESHOLD  # the refused call never reached the upstream
    assert refused.value.code == "circuit_open"
    assert 0 < refused.value.retry_after <= COOLDOWN


def test_calls_resume_by_themselves_when_the_upstream_is_back(guard):
    open_then_wait_for_half_open()
    calls = []

    for _ in range(5):
        call(calls=calls)

    assert len(calls) == 5
    assert get_circuit_breaker().state()["state"] == "closed"


def test_a_non_transient_answer_counts_as_the_upstream_being_up(guard):
    open_then_wait_for_half_open()

    with pytest.raises(UpstreamRefused):
        call(outcome=UpstreamRefused())

    assert get_circuit_breaker().state()["state"] == "closed"


def test_a_rate_limit_timeout_gives_the_probe_back(guard, settings):
    open_then_wait_for_half_open()
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0.5
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 1
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.0
    assert get_rate_limiter().acquire(priority=Priority.INTERACTIVE, timeout=0)

    with pytest.raises(RateLimitTimeoutError) as timed_out:
        call(max_wait=0.1)

    assert timed_out.value.code == "rate_limited"
    assert get_circuit_breaker().allow().probe_token  # not held by the caller that gave up


def test_an_interrupted_call_gives_the_probe_back(guard):
    open_then_wait_for_half_open()

    with pytest.raises(KeyboardInterrupt):
        call(outcome=KeyboardInterrupt())

    assert get_circuit_breaker().state()["state"] == "half_open"
    assert get_circuit_breaker().allow().probe_token


def test_calls_go_through_when_redis_is_unreachable(settings, caplog):
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}
    }
    calls = []

    with caplog.at_level(logging.WARNING), pytest.raises(UpstreamDown):
        call(outcome=UpstreamDown(), calls=calls)
    call(calls=calls)

    assert len(calls) == 2
    assert "unreachable in Redis; calling anyway" in caplog.text
    assert upstream_guard_state()["error"] == "redis_unreachable"


def test_embedded_default_keeps_the_breaker_per_process_without_rate_limit(settings, tmp_path):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(tmp_path),
            "KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
        }
    }
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = THRESHOLD

    for _ in range(THRESHOLD):
        with pytest.raises(UpstreamDown):
            call(outcome=UpstreamDown())
    with pytest.raises(CircuitOpenError):
        call()

    state = upstream_guard_state()
    assert state["circuit"]["state"] == "open"
    assert state["circuit"]["shared"] is False
    assert state["rate_limit"] == {"enabled": False}


def test_operators_see_the_circuit_and_the_bucket(guard, settings):
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 1.0  # the bucket barely refills meanwhile
    for _ in range(THRESHOLD):
        with pytest.raises(UpstreamDown):
            call(outcome=UpstreamDown())

    state = json.loads(json.dumps(upstream_guard_state()))

    assert state["circuit"]["state"] == "open"
    assert state["circuit"]["failure_threshold"] == THRESHOLD
    assert state["circuit"]["reopens_at"].endswith("+00:00")
    assert 0 < state["circuit"]["reopens_in"] <= COOLDOWN
    assert state["circuit"]["shared"] is True
    assert state["rate_limit"]["enabled"] is True
    assert state["rate_limit"]["per_second"] == 1.0
    assert state["rate_limit"]["tokens"] == pytest.approx(100 - THRESHOLD, abs=1)


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
