"""A batch of a run's users: threads fetch their answers, one thread reconciles them in bulk.

The run's rules for a batch live here: a configuration error stops the run, the syncs it did
not run are recorded, each user's sync is counted, a failed bulk reconcile falls back to one
by one, and the users worth another try are listed. The Celery task only retries them.
"""

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The task's soft time limit reaches this code as an exception: it stops the batch cleanly.
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connections
from redis.exceptions import RedisError

from core.entitlements import cache, runs, sync
from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.errors import EntitlementsUnavailableError
from core.entitlements.results import RunCategory, SyncResult
from core.entitlements.revocation_budget import RunRevocationBudget
from core.entitlements.runs import BatchTally
from core.entitlements.upstream_guard import Priority

# Per-user locks are taken here, not in the task: a user's lock is held from before their
# fetch in a pool thread until just after the batch's bulk reconcile commits their rights.
from core.locks import LockHeld, TTLLock, release_all, user_lock
from core.models import Trigger, User

logger = logging.getLogger(__name__)

# How long the first answer waits for others to be reconciled with it: long enough to gather
# a few waves of the pool's answers per transaction, short against the time a user's lock is
# held anyway. Each reconcile costs ~6 ms of CPU whatever its size: at 0.05 s a batch of 100
# took ~4 of them (~24 users each), at 0.15 s ~2 (~46 users each), 9% less CPU per user.
_RECONCILE_WINDOW_SECONDS = 0.15


@dataclass(slots=True)
class FetchedUser:
    """One user of a batch after the fetch: their answer (held under their lock), the upstream
    error to retry, or already its run category (lock held elsewhere, failure, not asked because a
    configuration error stopped the batch)."""

    user: User
    lock: TTLLock | None = None
    answer: UpstreamAnswer | None = None
    # The new answer's cache entry, written with the others' before the locks are released.
    to_cache: cache.Entry | None = None
    unavailable: EntitlementsUnavailableError | None = None
    category: RunCategory | None = None
    not_asked: bool = False


class _ConfigurationStop:
    """Set by the first answer that says our configuration is wrong: the batch asks no one else."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.error_code = ""
        # Whether the batch's thread has stopped the run (its one ERROR is logged then).
        self.run_stopped = False

    def __bool__(self) -> bool:
        return self._event.is_set()

    def see(self, answer: UpstreamAnswer) -> None:
        """Stop the batch if this answer is a configuration error."""
        if answer.kind is AnswerKind.CONFIGURATION_ERROR and not self._event.is_set():
            self.error_code = answer.error_code
            self._event.set()


def sync_run_batch(
    *,
    run_id: int,
    user_ids: list[str],
    trigger: Trigger,
    task_id: str,
    attempt: int = 0,
    last_try: bool = True,
) -> BatchTally:
    """Sync a batch of a run's users and count it in the run; the tally lists who to retry.

    A small pool of threads fetches (waiting on the upstream, no database query); the answers
    that arrived within a short window are reconciled together in one transaction, then their
    locks are released. The run's revocation budget is asked inside each reconcile. Users
    whose upstream was unavailable, or not fetched yet when the task hit its soft time limit,
    are left in `retry_user_ids`, unless it is the `last_try`: then they count as failed.
    A configuration error (the upstream refuses our key) stops the batch and the run: the
    users not asked count as not run (their state stays as it was), and nobody is retried.
    `task_id` owns the users' locks, so a redelivered batch takes back what its killed run left;
    with the `attempt` (the task's retries so far), it counts the batch in its run once.
    """
    tally = _sync_batch(run_id=run_id, user_ids=user_ids, trigger=trigger, task_id=task_id)
    if last_try:
        tally.give_up_retries()
    runs.record_batch(run_id=run_id, tally=tally, delivery=f"{task_id}:{attempt}")
    return tally


def _sync_batch(*, run_id: int, user_ids: list[str], trigger: Trigger, task_id: str) -> BatchTally:
    """The batch's syncs, counted, without recording the count in the run."""
    tally = BatchTally()
    if not user_ids:
        return tally
    if runs.stopped_asking(run_id=run_id):
        # Another batch of the run found the configuration wrong (asking would be refused), or
        # a new run replaced this one (asking would repeat it). Nobody is asked, and
        # everybody's state stays what it was.
        tally.counts[RunCategory.NOT_RUN] += len(user_ids)
        return tally
    # The run's budget: beyond it, the batch holds revocations instead of applying them.
    budget = RunRevocationBudget(run_id=run_id)
    users = sync.load_users_starting_sync(user_ids=user_ids)
    # Every user's cache entry in one read, instead of one read per user in the threads.
    cached = cache.read_entries(user_ids=[user.pk for user in users])
    # Deleted between the fan-out and now: nothing left to sync.
    tally.counts[RunCategory.SKIPPED] += len(user_ids) - len(users)
    threads = min(settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY, len(users))
    stop = _ConfigurationStop()

    def fetch(user: User) -> FetchedUser:
        return _fetch(
            user=user, trigger=trigger, task_id=task_id, stop=stop, cached=cached.get(user.pk)
        )

    fetches = _Fetches(users, fetch, threads=threads)
    try:
        while fetches.outstanding:
            try:
                fetched = fetches.collect(window=_RECONCILE_WINDOW_SECONDS)
                _finish(fetched, tally, trigger, task_id, budget, stop=stop)
                if stop and not stop.run_stopped:
                    runs.stop_run_on_configuration_error(run_id=run_id, error_code=stop.error_code)
                    stop.run_stopped = True
            except SoftTimeLimitExceeded:
                # Finish the users in flight, start no new one; the rest goes to the retry.
                logger.warning(
                    "batch %s hit its soft time limit; untried users will retry", task_id
                )
                tally.retry_user_ids += [str(user.pk) for user in fetches.cancel()]
    finally:
        fetches.close()
    return tally


class _Fetches:
    """The batch's users, fetched by a few threads that each take the next one from a shared
    list; the batch's thread collects their answers as they arrive.

    One list rather than a future per user: no future to make per user and none to watch
    again at each collect (`concurrent.futures.wait` installs a waiter on every pending one),
    and each thread closes its database connection once, when it is done.
    """

    def __init__(self, users: list[User], fetch: Callable[[User], FetchedUser], *, threads: int):
        self._waiting = deque(users)
        self._fetch = fetch
        self._arrived: list[FetchedUser] = []
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        # Users not collected yet: waiting, being fetched, or arrived.
        self.outstanding = len(users)
        self._threads = [
            threading.Thread(target=self._work, name=f"sync-batch_{number}")
            for number in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        """A thread's loop: fetch the next waiting user until there is none."""
        try:
            while True:
                with self._changed:
                    if not self._waiting or self._error is not None:
                        return
                    user = self._waiting.popleft()
                try:
                    fetched = self._fetch(user)
                except BaseException as error:
                    with self._changed:
                        self._error = error
                        self._changed.notify()
                    return
                with self._changed:
                    self._arrived.append(fetched)
                    # What `collect` waits for: a first answer, then all of them.
                    if len(self._arrived) in (1, self.outstanding):
                        self._changed.notify()
        finally:
            # A custom backend may use the database: a thread's connection must not leak.
            connections.close_all()

    def collect(self, *, window: float) -> list[FetchedUser]:
        """The fetches that ended: wait for one, then for the others up to `window` seconds.

        Raises what a fetch raised (`_fetch` catches what one user's sync may raise).
        """
        with self._changed:
            self._changed.wait_for(lambda: self._arrived or self._error is not None)
            self._changed.wait_for(
                lambda: len(self._arrived) == self.outstanding or self._error is not None,
                timeout=window,
            )
            if self._error is not None:
                raise self._error
            arrived, self._arrived = self._arrived, []
            self.outstanding -= len(arrived)
        return arrived

    def cancel(self) -> list[User]:
        """Take back the users no thread has started on."""
        with self._changed:
            users = list(self._waiting)
            self._waiting.clear()
            self.outstanding -= len(users)
        return users

    def close(self) -> None:
        """Start no other user, and wait for the threads to end their current one."""
        self.cancel()
        for thread in self._threads:
            thread.join()


def _fetch(
    *, user: User, trigger: Trigger, task_id: str, stop: _ConfigurationStop, cached: Any
) -> FetchedUser:
    """A pool thread's work for one user; nothing once a configuration error stopped the batch.

    `cached` is the user's cache entry read with the batch's (None: there was none).
    """
    if stop:
        return FetchedUser(user=user, category=RunCategory.NOT_RUN, not_asked=True)
    fetched = _fetch_under_lock(user=user, trigger=trigger, task_id=task_id, cached=cached)
    if fetched.answer is not None:
        stop.see(fetched.answer)
    return fetched


def _fetch_under_lock(*, user: User, trigger: Trigger, task_id: str, cached: Any) -> FetchedUser:
    """Take the user's lock and fetch their answer for a batch; the lock stays held.

    The batch's task id owns the lock, so a redelivered batch takes back what its killed run
    left. Never raises for one user: a batch goes on whatever happens to one of its users.
    """
    lock = user_lock(user.pk, owner=task_id)
    try:
        # Bulk priority: a full run leaves the rate limit's reserve to login syncs. The trigger
        # says how fresh: a run a person started asks now, the periodic run may use the cache.
        # The lock is taken in the upstream guard's round trip, with the call's admission.
        answer, to_cache = sync.fetch_answer_to_cache(
            user=user, trigger=trigger, priority=Priority.BULK, cached=cached, lock=lock
        )
    except LockHeld:
        # Another sync of this user is running now: it is at least as fresh as this run.
        return FetchedUser(user=user, category=RunCategory.SKIPPED)
    except RedisError:
        # Redis is unreachable, so no user's lock can be taken: the batch task fails here
        # rather than failing each of its users one by one.
        lock.release()
        raise
    except EntitlementsUnavailableError as error:
        return FetchedUser(user=user, lock=lock, unavailable=error)
    except Exception:
        lock.release()
        # Logged with its traceback (Sentry gets it), without the user's email or claims.
        logger.exception("sync of user %s failed while fetching", user.pk)
        return FetchedUser(user=user, category=RunCategory.FAILED)
    return FetchedUser(user=user, lock=lock, answer=answer, to_cache=to_cache)


def _finish(
    fetched: list[FetchedUser],
    tally: BatchTally,
    trigger: Trigger,
    task_id: str,
    revocation_budget: RunRevocationBudget,
    *,
    stop: _ConfigurationStop,
) -> None:
    """Record the fetched users' syncs, count them, release their locks.

    Once a configuration error stopped the batch, users left unasked are recorded failed
    with it, and those whose upstream was unavailable are not retried.
    """
    counted: set[int] = set()
    try:
        answered = [item for item in fetched if item.answer is not None]
        for item, result in zip(
            answered, _reconcile(answered, trigger, task_id, revocation_budget), strict=True
        ):
            tally.count(result)
            counted.add(id(item))
        not_asked = [item.user.pk for item in fetched if item.not_asked]
        if not_asked:
            sync.end_syncs_not_run(user_ids=not_asked)
        for item in fetched:
            if id(item) in counted:
                continue
            if item.unavailable is not None:
                sync.record_sync_unavailable(
                    user=item.user, trigger=trigger, task_id=task_id, error=item.unavailable
                )
                if stop:
                    tally.count(RunCategory.FAILED)
                else:
                    tally.retry_user_ids.append(str(item.user.pk))
            else:
                assert item.category is not None, "a user neither answered nor unavailable has one"
                tally.count(item.category)
            counted.add(id(item))
    except SoftTimeLimitExceeded:
        # Whatever was not recorded yet is tried again by the batch's retry.
        tally.retry_user_ids += [str(item.user.pk) for item in fetched if id(item) not in counted]
        raise
    finally:
        _store_and_release(fetched)


def _store_and_release(fetched: list[FetchedUser]) -> None:
    """Cache the new answers, then free the users' locks: a round trip each for all of them.

    A cache that fails to take them costs only a later cache miss: the locks are freed anyway.
    """
    try:
        cache.store_entries([item.to_cache for item in fetched if item.to_cache is not None])
    except SoftTimeLimitExceeded:
        # The batch stops (its users retry), with their locks freed all the same.
        _release(fetched)
        raise
    except Exception:
        logger.warning("answers of %d users not cached", len(fetched), exc_info=True)
    _release(fetched)


def _release(fetched: list[FetchedUser]) -> None:
    release_all(item.lock for item in fetched if item.lock is not None)
    for item in fetched:
        item.lock = None


def _reconcile(
    answered: list[FetchedUser],
    trigger: Trigger,
    task_id: str,
    revocation_budget: RunRevocationBudget,
) -> Sequence[SyncResult | RunCategory]:
    """Each user's SyncResult, or the RunCategory of a user whose reconcile failed.

    All together in one transaction; if that fails, one by one, so that one user's failure
    never costs the others their sync.
    """
    if not answered:
        return []
    # Every one has its answer: the test only narrows the type.
    answers = [(item.user, item.answer) for item in answered if item.answer is not None]
    try:
        return sync.reconcile_fetched_answers(
            answers=answers, trigger=trigger, task_id=task_id, revocation_budget=revocation_budget
        )
    except SoftTimeLimitExceeded:
        raise
    except Exception:
        logger.warning(
            "bulk reconcile of %d users failed; retrying one by one", len(answers), exc_info=True
        )
    results: list[SyncResult | RunCategory] = []
    result: SyncResult | RunCategory
    for answer in answers:
        try:
            [result] = sync.reconcile_fetched_answers(
                answers=[answer],
                trigger=trigger,
                task_id=task_id,
                revocation_budget=revocation_budget,
            )
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            if not User.objects.filter(pk=answer[0].pk).exists():
                # Deleted while their answer was fetched: nothing left to sync.
                result = RunCategory.SKIPPED
            else:
                logger.exception("sync of user %s (%s) failed", answer[0].pk, trigger)
                result = RunCategory.FAILED
        results.append(result)
    return results
