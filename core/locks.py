"""Named locks with an owner token and a time to live, and the locks the sync takes."""

import logging
import uuid
from collections.abc import Iterable

from django.conf import settings
from django.core.cache import cache
from redis.commands.core import Script
from redis.exceptions import LockError

logger = logging.getLogger(__name__)

_KEY_PREFIX = "entitlements:lock:"

# The Lua functions that take a lock on Redis, its value being the holder's token. TTLLock runs
# them alone; the upstream guard's admission runs them inside its own script, so that a batch
# takes a user's lock in the same round trip as the upstream call's admission.
TAKE_LOCK_LUA = """
-- Whether `token` may take the lock at `key`: nobody holds it, or `takes_back` and it is ours.
local function lock_is_free(key, token, takes_back)
  local holder = redis.call('GET', key)
  return (not holder) or (takes_back and holder == token)
end
-- Take the lock, or renew the one taken back, for `ttl_ms`; only after lock_is_free said so.
local function take_lock(key, token, ttl_ms)
  redis.call('SET', key, token, 'PX', ttl_ms)
end
"""

# KEYS: the lock. ARGV: token, 1 if the token's owner may take back the lock it left, ttl (ms).
# Registered with no client (None, which redis-py's hints do not allow): each call passes one.
_TAKE_LOCK = Script(
    None,  # type: ignore[arg-type]
    (
        TAKE_LOCK_LUA
        + """
if not lock_is_free(KEYS[1], ARGV[1], ARGV[2] == '1') then return 0 end
take_lock(KEYS[1], ARGV[1], ARGV[3])
return 1
"""
    ).encode(),
)


class LockHeld(Exception):
    """Somebody else holds the lock: what it protects is running elsewhere now."""


class TTLLock:
    """A non-blocking lock that only its owner releases and that expires after `ttl` seconds.

    The time to live is what frees the lock of a process killed while holding it, so it must
    exceed the longest run of the code it protects. On Redis (django-redis) it is taken by one
    Lua script (`TAKE_LOCK_LUA`: free, or taken back by its owner, then SET PX) and released by
    redis-py's lock (a Lua compare-and-delete). Other cache backends (the embedded default's
    file cache) get the same protocol through `cache.add`, which is not atomic across
    processes there: good enough for one demo machine only.

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
            key, arguments = self.redis_take_arguments()
            self._held = False
            if _TAKE_LOCK([key], arguments, client=self._redis_lock.redis):
                self.taken_in_redis()
            return self._held
        self._held = cache.add(self.key, self._token, timeout=self.ttl)
        if not self._held and self._owner:
            self._held = self._take_back()
        return self._held

    def acquire_or_raise(self) -> None:
        """Take the lock, or raise LockHeld if somebody else holds it."""
        if not self.acquire():
            raise LockHeld(self.key)

    def redis_take_arguments(self) -> tuple[str, list[str | int]]:
        """The Redis key and the arguments TAKE_LOCK_LUA's functions take this lock with.

        A script that took it with them calls `taken_in_redis` to make this object its holder.
        """
        assert self._redis_lock is not None, "only a lock on Redis is taken by a script"
        # The owner's token takes back the lock a killed run of the same task left.
        takes_back = int(bool(self._owner))
        return self._redis_lock.name, [self._token, takes_back, max(1, round(self.ttl * 1000))]

    def taken_in_redis(self) -> None:
        """Record that a script took this lock: release it as its holder."""
        assert self._redis_lock is not None, "only a lock on Redis is taken by a script"
        self._redis_lock.local.token = self._token.encode()
        self._held = True

    def _take_back(self) -> bool:
        """Take the lock over, with a fresh TTL, if it is held under our owner's name (the file
        cache; on Redis, TAKE_LOCK_LUA does it)."""
        if cache.get(self.key) != self._token:
            return False
        cache.set(self.key, self._token, timeout=self.ttl)
        return True

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


def run_lock(*, scope_key: str, owner: str = "") -> TTLLock:
    """The lock held while a run of this scope starts and fans out.

    `owner` is the fan-out task's id: its copy delivered again after it was killed mid-way
    takes back the lock and finishes the job (fan_out.py).
    """
    # Outlives the fan-out task's hard time limit, so only a killed fan-out leaves it behind.
    return TTLLock(f"resync:{scope_key}", ttl=settings.CELERY_TASK_TIME_LIMIT + 60, owner=owner)
