"""The guard the engine asks each upstream request through: breaker and rate limit together,
the outcome it is told, a batch user's lock taken with the admission in one round trip,
behaviour without Redis, the operators' view and the settings."""

import json
import logging
import runpy
import threading
import time
from types import SimpleNamespace
from unittest import mock

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django_redis import get_redis_connection
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import messages.settings
from core.entitlements import rate_limit, sync_run_batch, upstream_guard
from core.entitlements.circuit_breaker import CircuitBreaker
from core.entitlements.rate_limit import get_rate_limiter, schedule_key
from core.entitlements.upstream_guard import Priority, admit_upstream_call, upstream_status
from core.locks import LockHeld, user_lock
from core.models import SyncRun
from tests.factories import SyncRunFactory

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


# A batch's call, admitted with its user's lock (`admit_upstream_call(lock=...)`): the breaker's
# admission, the rate limit's slot and the lock in one script, with the pieces' own outcomes.


def call_taking(lock, *, available: bool = True, priority: Priority = Priority.BULK) -> str:
    """call(), admitted together with `lock`; the lock is left held, as a batch holds it."""
    with admit_upstream_call(priority=priority, lock=lock) as upstream:
        if upstream.refused:
            return upstream.refused
        upstream.record(available=available)
    return ""


def schedule() -> bytes | None:
    """The rate limit's schedule as Redis holds it: a slot taken moves it on."""
    return get_redis_connection("default").hget(schedule_key(), "tat")


def sleep_in_rate_limit(monkeypatch, sleep) -> None:
    """Replace time.sleep in the rate limit's module only: other threads sleep as before."""
    clock = SimpleNamespace(monotonic=time.monotonic, sleep=sleep)
    monkeypatch.setattr(rate_limit, "time", clock)


def test_an_admitted_call_holds_its_lock_and_took_one_slot(guard):
    lock = user_lock("u1", owner="batch-1")
    assert schedule() is None

    assert call_taking(lock) == ""

    assert not user_lock("u1").acquire(), "the lock is held"
    assert schedule() is not None, "a slot was taken"
    lock.release()
    assert not user_lock("u1").locked()


def test_a_lock_held_elsewhere_takes_no_slot_and_leaves_the_probe(guard):
    open_then_wait_for_half_open()
    before = schedule()
    other = user_lock("u1")
    assert other.acquire()

    with pytest.raises(LockHeld):
        call_taking(user_lock("u1", owner="batch-1"))

    assert schedule() == before
    assert CircuitBreaker().state()["probe_in_flight"] is False
    assert other.locked()
    other.release()


def test_a_batch_takes_back_the_lock_its_killed_run_left(guard):
    assert user_lock("u1", owner="batch-1").acquire()

    assert call_taking(user_lock("u1", owner="batch-1")) == ""
    with pytest.raises(LockHeld):
        call_taking(user_lock("u1", owner="batch-2"))


def test_an_open_circuit_takes_no_slot_and_the_lock_alone(guard):
    for _ in range(THRESHOLD):
        call(available=False)
    before = schedule()
    lock = user_lock("u1", owner="batch-1")

    assert call_taking(lock) == "circuit_open"

    assert schedule() == before
    # The sync serves the stale answer, if any, under the lock all the same.
    assert not user_lock("u1").acquire()
    lock.release()


def test_the_single_probe_is_claimed_with_the_lock_and_its_answer_closes_the_circuit(guard):
    open_then_wait_for_half_open()
    lock = user_lock("u1", owner="batch-1")

    with admit_upstream_call(priority=Priority.BULK, lock=lock) as probe:
        assert probe.admission.probe_token
        assert CircuitBreaker().state()["probe_in_flight"] is True
        assert call_taking(user_lock("u2")) == "circuit_open"
        probe.record(available=True)

    assert CircuitBreaker().state()["state"] == "closed"
    assert lock.locked()


def test_a_slot_not_there_yet_is_waited_for_with_the_lock_free(guard, settings, monkeypatch):
    # Bulk may book no slot ahead here: it waits until the schedule is back to now.
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 5.0
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 2
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.5
    assert get_rate_limiter().acquire(priority=Priority.INTERACTIVE, timeout=0)
    lock_free_while_sleeping = []
    sleep = time.sleep

    def watched_sleep(seconds: float) -> None:
        lock_free_while_sleeping.append(not user_lock("u1").locked())
        sleep(seconds)

    sleep_in_rate_limit(monkeypatch, watched_sleep)

    assert call_taking(user_lock("u1", owner="batch-1")) == ""

    # Waiting for the slot, the lock was free; the last sleep (0 s, until the granted slot) not.
    assert len(lock_free_while_sleeping) >= 2
    assert lock_free_while_sleeping[0] is True
    assert lock_free_while_sleeping[-1] is False


def test_no_slot_within_the_wait_refuses_and_takes_the_lock_alone(guard, settings, monkeypatch):
    open_then_wait_for_half_open()
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0.5
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 1
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.0
    assert get_rate_limiter().acquire(priority=Priority.INTERACTIVE, timeout=0)
    before = schedule()
    monkeypatch.setitem(upstream_guard._MAX_WAIT_SECONDS, Priority.BULK, 0.1)
    lock = user_lock("u1", owner="batch-1")

    assert call_taking(lock) == "rate_limited"

    assert schedule() == before
    assert lock.locked()
    assert CircuitBreaker().allow().probe_token  # the refused call never held the probe


def test_bulk_calls_with_their_lock_are_paced_as_the_rate_limit_alone_paces(
    guard, settings, monkeypatch
):
    # 100 ms apart; bulk books up to 7 slots ahead (burst 10, 2 reserved).
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 10.0
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 10
    settings.ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = 0.2
    slots: list[float] = []
    # Not slept: each call books the next slot at once; the slot is when its sleep would end.
    sleep_in_rate_limit(monkeypatch, lambda seconds: slots.append(time.monotonic() + seconds))
    for index in range(5):
        assert call_taking(user_lock(f"u{index}")) == ""
    with_lock, slots[:] = list(slots), []
    get_redis_connection("default").delete(schedule_key())

    for _ in range(5):
        assert get_rate_limiter().acquire(priority=Priority.BULK, timeout=30)

    # Consecutive slots, one interval apart, however long the calls took to be made.
    for booked in (with_lock, slots):
        after_first = [slot - booked[0] for slot in booked]
        assert after_first == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4], abs=0.03)


@pytest.mark.parametrize("with_lock", [False, True])
def test_a_success_is_not_reported_to_a_closed_circuit_with_no_failures(
    guard, monkeypatch, with_lock
):
    reported = []
    record_success = CircuitBreaker.record_success
    monkeypatch.setattr(
        CircuitBreaker, "record_success", lambda self: reported.append(record_success(self))
    )

    def one_call(*, available: bool) -> None:
        if with_lock:
            lock = user_lock("u1")
            call_taking(lock, available=available)
            lock.release()
        else:
            call(available=available)

    one_call(available=True)
    assert reported == []
    one_call(available=False)  # a failure is still counted...
    assert CircuitBreaker().state()["failures"] == 1
    one_call(available=True)  # ...and the next success, told of it, ends the run of failures
    assert len(reported) == 1
    assert CircuitBreaker().state()["failures"] == 0
    one_call(available=True)
    assert len(reported) == 1


def test_redis_failing_in_the_admission_lets_the_call_go_under_the_lock(guard, monkeypatch, caplog):
    def unreachable(*args, **kwargs):
        raise RedisConnectionError("Redis is gone for this script")

    monkeypatch.setattr(upstream_guard, "_ADMIT_TAKING_LOCK", unreachable)
    lock = user_lock("u1")

    with caplog.at_level(logging.WARNING):
        assert call_taking(lock) == ""

    assert "unreachable in Redis; calling anyway" in caplog.text
    assert lock.locked()


def test_a_batch_makes_one_redis_round_trip_per_user(
    transactional_db, guard, make_user, scripted_upstream, settings
):
    """The fetch threads' Redis commands, counted per user: lock, breaker and slot were one
    round trip each, plus the breaker's outcome (4); now the one admission. The batch's own
    (cache read, cache write, locks released) are per batch or per reconcile."""
    settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY = 4
    users = [make_user() for _ in range(12)]
    scripted_upstream(admins_by_email={user.email: [] for user in users})
    user_ids = [str(user.pk) for user in users]
    run_id = SyncRunFactory(status=SyncRun.Status.RUNNING, revoke_budget=1000).pk
    # Once before counting: Redis learns the scripts (a first EVALSHA costs two more trips).
    sync_run_batch(run_id=run_id, user_ids=user_ids, trigger="admin", task_id="warm")
    commands: list[tuple[str, str]] = []
    execute_command = Redis.execute_command

    def counted(self, *args, **options):
        commands.append((threading.current_thread().name, str(args[0])))
        return execute_command(self, *args, **options)

    with mock.patch.object(Redis, "execute_command", counted):
        tally = sync_run_batch(run_id=run_id, user_ids=user_ids, trigger="admin", task_id="b")

    assert tally.as_dict()["done"] == len(users)
    in_fetch_threads = [name for thread, name in commands if thread.startswith("sync-batch")]
    assert in_fetch_threads == ["EVALSHA"] * len(users)
