"""The entitlements circuit breaker: shared through real Redis by threads and OS processes."""

import threading
import time

import pytest
from django.core.cache import caches
from django_redis import get_redis_connection

from core.entitlements.circuit_breaker import CircuitBreaker
from tests.entitlements import upstream_guard_processes

THRESHOLD = 3
COOLDOWN = 0.5


@pytest.fixture
def breaker(settings):
    """A breaker with a short cool-down; the test's Redis keys deleted after."""
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = THRESHOLD
    settings.ENTITLEMENTS_CIRCUIT_WINDOW_SECONDS = 10.0
    settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = COOLDOWN
    prefix = caches["default"].key_prefix
    yield CircuitBreaker()
    connection = get_redis_connection("default")
    for key in connection.scan_iter(f"{prefix}:*"):
        connection.delete(key)


def open_circuit(breaker) -> None:
    for _ in range(THRESHOLD):
        breaker.record_failure()


def wait_until_half_open(breaker) -> None:
    time.sleep(breaker.state()["reopens_in"] + 0.02)
    assert breaker.state()["state"] == "half_open"


def test_opens_after_threshold_failures(breaker, caplog):
    for _ in range(THRESHOLD - 1):
        breaker.record_failure()
        assert breaker.allow()
    assert breaker.state()["failures"] == THRESHOLD - 1

    breaker.record_failure()

    state = breaker.state()
    assert state["state"] == "open"
    assert 0 < state["reopens_in"] <= COOLDOWN
    assert not breaker.allow()
    assert "circuit opened after 3 failures" in caplog.text


def test_refuses_while_open_and_ignores_late_failures(breaker):
    open_circuit(breaker)
    reopens_at = breaker.state()["reopens_at"]

    refusals = [breaker.allow() for _ in range(50)]
    # A call admitted before the circuit opened may still report its failure: no extension.
    breaker.record_failure()
    breaker.record_success()

    assert not any(refusals)
    assert all(0 < refusal.retry_after <= COOLDOWN for refusal in refusals)
    assert breaker.state()["reopens_at"] == reopens_at
    assert breaker.state()["state"] == "open"


def test_only_failures_in_a_row_within_the_window_count(breaker, settings):
    settings.ENTITLEMENTS_CIRCUIT_WINDOW_SECONDS = 0.3
    breaker.record_failure()
    breaker.record_failure()
    time.sleep(0.35)
    breaker.record_failure()  # the first two fell out of the window
    assert breaker.state()["state"] == "closed"

    breaker.record_failure()
    breaker.record_success()  # an answer breaks the run
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state()["failures"] == 2
    assert breaker.state()["state"] == "closed"

    breaker.record_failure()
    assert breaker.state()["state"] == "open"


def test_half_open_admits_exactly_one_probe_among_20_threads(breaker):
    open_circuit(breaker)
    wait_until_half_open(breaker)
    barrier = threading.Barrier(20)
    admissions = []

    def ask() -> None:
        barrier.wait()
        admissions.append(breaker.allow())

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    probes = [admission for admission in admissions if admission]
    assert len(admissions) == 20
    assert len(probes) == 1
    assert probes[0].probe_token
    assert breaker.state()["probe_in_flight"] is True


def test_probe_success_closes_the_circuit(breaker, caplog):
    open_circuit(breaker)
    wait_until_half_open(breaker)
    assert breaker.allow().probe_token

    breaker.record_success()

    state = breaker.state()
    assert state["state"] == "closed"
    assert state["reopens_at"] is None
    assert state["probe_in_flight"] is False
    assert all(breaker.allow() for _ in range(5))
    assert "circuit closed" in caplog.text


def test_probe_failure_reopens_for_another_cooldown(breaker, caplog):
    open_circuit(breaker)
    wait_until_half_open(breaker)
    assert breaker.allow().probe_token

    breaker.record_failure()

    state = breaker.state()
    assert state["state"] == "open"
    assert state["reopenings"] == 1
    assert COOLDOWN - 0.1 < state["reopens_in"] <= COOLDOWN
    assert not breaker.allow()
    assert "circuit re-opened" in caplog.text
    # ...and the next cool-down ends in a new probe.
    wait_until_half_open(breaker)
    assert breaker.allow().probe_token


def test_released_probe_goes_to_the_next_caller(breaker):
    open_circuit(breaker)
    wait_until_half_open(breaker)
    probe = breaker.allow()
    assert not breaker.allow()

    breaker.release(probe)

    assert breaker.allow().probe_token


def test_state_is_shared_between_processes(settings):
    """Failures reported by one process open the circuit for another; the probe is single
    across processes; a success anywhere closes it for all."""
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = THRESHOLD
    # Longer than a child process takes to exit on a loaded machine, or the circuit (or the
    # child's probe) would expire before this process looks.
    settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = 4.0
    prefix = caches["default"].key_prefix
    env = {
        "CACHE_KEY_PREFIX": prefix,
        "ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD": str(THRESHOLD),
        "ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS": "4.0",
    }
    breaker = CircuitBreaker()
    try:
        *_, other_state = upstream_guard_processes.run(
            "breaker", *["failure"] * THRESHOLD, "state", env=env
        )
        assert other_state["state"] == "open"
        assert breaker.state()["state"] == "open"
        assert not breaker.allow()

        wait_until_half_open(breaker)
        assert upstream_guard_processes.run("breaker", "allow", env=env) == [
            {"allowed": True, "probe": True}
        ]
        assert not breaker.allow()  # the other process holds the probe

        breaker.record_success()
        assert upstream_guard_processes.run("breaker", "allow", "state", env=env)[0] == {
            "allowed": True,
            "probe": False,
        }
    finally:
        connection = get_redis_connection("default")
        for key in connection.scan_iter(f"{prefix}:*"):
            connection.delete(key)
