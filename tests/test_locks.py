"""TTL locks: one holder at a time, released only by their owner, freed by expiry when the
holder dies."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from django.conf import settings as django_settings

from core.locks import TTLLock, release_all


@pytest.fixture(params=["redis", "file"])
def cache_backend(request, settings, tmp_path):
    """Every test runs on django-redis and on the embedded default's file cache."""
    if request.param == "file":
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                "LOCATION": str(tmp_path / "cache"),
            }
        }
    return request.param


def test_one_holder_at_a_time(cache_backend):
    first, second = TTLLock("user:1", ttl=30), TTLLock("user:1", ttl=30)

    assert first.acquire()
    assert not second.acquire()
    assert second.locked()
    first.release()
    assert not first.locked()
    assert second.acquire()
    second.release()


def test_context_manager_says_whether_it_got_the_lock(cache_backend):
    with TTLLock("run:all", ttl=30) as outer:
        with TTLLock("run:all", ttl=30) as inner:
            assert (outer, inner) == (True, False)
        # The loser's exit does not free the winner's lock.
        assert TTLLock("run:all", ttl=30).locked()
    assert not TTLLock("run:all", ttl=30).locked()


def test_different_names_do_not_collide(cache_backend):
    with TTLLock("user:1", ttl=30) as one, TTLLock("user:2", ttl=30) as two:
        assert one and two


def test_expired_lock_is_free_and_its_late_owner_cannot_release_the_next_one(cache_backend):
    late = TTLLock("user:1", ttl=1)
    assert late.acquire()
    time.sleep(1.2)

    current = TTLLock("user:1", ttl=30)
    assert current.acquire()
    late.release()

    assert current.locked(), "a late owner must not free its successor's lock"
    current.release()


def test_a_lock_left_under_an_owner_is_taken_back_by_that_owner_only(cache_backend):
    # A task's run took the lock under the task id, then its process was killed.
    assert TTLLock("user:1", ttl=1, owner="task-1").acquire()

    assert not TTLLock("user:1", ttl=30, owner="task-2").acquire()
    assert not TTLLock("user:1", ttl=30).acquire()
    redelivered = TTLLock("user:1", ttl=30, owner="task-1")
    assert redelivered.acquire()
    time.sleep(1.2)
    assert redelivered.locked(), "taking the lock back renews its time to live"
    redelivered.release()
    assert not TTLLock("user:1", ttl=30).locked()


def test_lock_of_a_killed_process_expires_by_its_ttl(settings):
    script = textwrap.dedent(
        """
        import django, time
        django.setup()
        from core.locks import TTLLock
        assert TTLLock("user:killed", ttl=2).acquire()
        print("held", flush=True)
        time.sleep(60)
        """
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "messages.settings",
        "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
    }
    with subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=10)
        finally:
            holder.kill()
    started = time.monotonic()

    assert not TTLLock("user:killed", ttl=30).acquire()
    while not TTLLock("user:killed", ttl=30).acquire():
        assert time.monotonic() - started < 5
        time.sleep(0.1)
    assert time.monotonic() - started >= 1


def test_locks_live_on_the_shared_redis():
    assert django_settings.CACHES["default"]["BACKEND"] == "django_redis.cache.RedisCache"


def test_release_all_frees_the_held_locks_only(cache_backend):
    first, second = TTLLock("user:1", ttl=30), TTLLock("user:2", ttl=30)
    assert first.acquire() and second.acquire()
    others = TTLLock("user:3", ttl=30)
    assert others.acquire()
    loser = TTLLock("user:3", ttl=30)
    assert not loser.acquire()
    never_taken = TTLLock("user:4", ttl=30)

    release_all([first, second, loser, never_taken])

    assert not TTLLock("user:1", ttl=30).locked()
    assert not TTLLock("user:2", ttl=30).locked()
    assert TTLLock("user:3", ttl=30).locked(), "a lock it did not hold is not freed"
    first.release()  # already free: nothing happens
    others.release()


def test_release_all_leaves_an_expired_lock_to_its_next_holder(cache_backend, caplog):
    late = TTLLock("user:1", ttl=1)
    assert late.acquire()
    time.sleep(1.2)
    current = TTLLock("user:1", ttl=30)
    assert current.acquire()

    release_all([late])

    assert current.locked(), "a late owner must not free its successor's lock"
    if cache_backend == "redis":
        assert "expired before its owner released it" in caplog.text
    current.release()
