"""Named locks with an owner token and a time to live, and the locks the sync takes."""

import logging
import uuid
from collections.abc import Iterable

from django.conf import settings
from django.core.cache import cache
from redis.exceptions import LockError, LockNotOwnedError

logger = logging.getLogger(__name__)

_KEY_PREFIX = "entitlements:lock:"


class TTLLock:
    """A non-blocking lock that only its owner releases and that expires after `ttl` seconds.

    The time to live is what frees the lock of a process killed while holding it, so it must
    exceed the longest run of the code it protects. On Redis (django-redis) this is redis-py's
    lock: atomic SET NX PX to take it, a Lua compare-and-delete to release it. Other cache
    backends (the embedded default's file cache) get the same protocol through `cache.add`,
    which is not atomic across processes there: good enough for one demo machine only.

    `owner` (a task id) makes the holder known: a lock found held by the same owner is taken
    back. Celery redelivers a task killed mid-way (late acks) under its own id, and without
    this the new copy would wait out the lock its dead predecessor left.
    """

    def __init__(self, name: str, *, ttl: float, owner: str = ""):
        self.key = f"{_KEY_PREFIX}{name}"
        self.ttl = ttl
        self._owner = owner
        self._token = owner or uuid.uuid4().hex
        self._held = False
        self._redis_lock = (
            # The token is per lock object, not per thread: batch threads own their own locks.
            cache.lock(self.key, timeout=ttl, thread_local=False)
            if hasattr(cache, "lock")
            else None
        )

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        if self._redis_lock is not None:
            self._held = self._redis_lock.acquire(blocking=False, token=self._token)
        else:
            self._held = cache.add(self.key, self._token, timeout=self.ttl)
        if not self._held and self._owner:
            self._held = self._take_back()
        return self._held

    def _take_back(self) -> bool:
        """Take the lock over, with a fresh TTL, if it is held under our owner's name."""
        if self._redis_lock is None:
            if cache.get(self.key) != self._token:
                return False
            cache.set(self.key, self._token, timeout=self.ttl)
            return True
        # Compare-and-expire in one Lua script: only a lock still holding our token is renewed.
        self._redis_lock.local.token = self._token.encode()
        try:
            return self._redis_lock.reacquire()
        except LockNotOwnedError:
            self._redis_lock.local.token = None
            return False

    def release(self) -> None:
        """Free the lock if this object still owns it; a lock that expired is left alone."""
        if not self._held:
            return
        self._held = False
        if self._redis_lock is not None:
            try:
                self._redis_lock.release()
            except LockError:
                logger.warning("lock %s expired before its owner released it", self.key)
            return
        if cache.get(self.key) == self._token:
            cache.delete(self.key)

    def _release_in(self, pipeline) -> bool:
        """Queue this Redis lock's release in `pipeline`; False if it is not held."""
        if not self._held or self._redis_lock is None:
            return False
        self._held = False
        token, self._redis_lock.local.token = self._redis_lock.local.token, None
        self._redis_lock.lua_release(keys=[self._redis_lock.name], args=[token], client=pipeline)
        return True

    def locked(self) -> bool:
        """Whether anybody holds the lock now."""
        if self._redis_lock is not None:
            return self._redis_lock.locked()
        return cache.get(self.key) is not None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def release_all(locks: Iterable[TTLLock]) -> None:
    """Release many locks as `release` would, those on Redis in one round trip.

    A batch frees its users' locks together once their syncs are recorded.
    """
    queued: list[TTLLock] = []
    pipeline = None
    for lock in locks:
        if lock._redis_lock is None:
            lock.release()
            continue
        if pipeline is None:
            pipeline = lock._redis_lock.redis.pipeline(transaction=False)
        if lock._release_in(pipeline):
            queued.append(lock)
    if pipeline is None or not queued:
        return
    for lock, released in zip(queued, pipeline.execute(), strict=True):
        if not released:
            logger.warning("lock %s expired before its owner released it", lock.key)


# Hard time limit of entitlements.sync_user: one upstream call with its own timeouts and
# retries inside, plus one short transaction.
SYNC_USER_TIME_LIMIT = 60
# Longer than any one user's sync (the task is killed at its hard limit, a batch thread's
# user takes far less), so a live sync never loses its lock; a killed one frees it by expiry.
USER_LOCK_TTL = SYNC_USER_TIME_LIMIT + 30


def user_lock(user_id, *, owner: str = "") -> TTLLock:
    """The lock that keeps two syncs of one user from running at once.

    `owner` is the task id: a redelivered task takes back the lock its killed run left.
    """
    return TTLLock(f"sync-user:{user_id}", ttl=USER_LOCK_TTL, owner=owner)


def run_lock(*, scope_key: str) -> TTLLock:
    """The lock held while a run of this scope starts and fans out."""
    # Outlives the fan-out task's hard time limit, so only a killed fan-out leaves it behind.
    return TTLLock(f"resync:{scope_key}", ttl=settings.CELERY_TASK_TIME_LIMIT + 60)
