"""Admin-wide resync runs: one at a time, fanned out in batches, counted in their SyncRun row."""

import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connections
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from core.entitlements import (
    RevocationGuard,
    SyncResult,
    finish_user_syncs,
    new_run_budget,
    record_sync_unavailable,
    start_user_syncs,
)
from core.models import SyncRun, User
from worker.locks import TTLLock
from worker.queues import BULK_QUEUE, SYNC_USERS_BATCH_TASK
from worker.user_sync import FetchedUser, Outcome, fetch_under_lock, outcome_of

logger = logging.getLogger(__name__)

# Progress is written to the result backend every this many batches, not at every one.
_PROGRESS_EVERY_BATCHES = 20
# Ids fetched per round trip while streaming a run's users from the database.
_STREAM_CHUNK = 2000


@dataclass(slots=True)
class BatchOutcome:
    """What one batch did: counts per outcome, and the users worth trying again later."""

    counts: Counter = field(default_factory=Counter)
    retry_user_ids: list[str] = field(default_factory=list)

    def give_up_retries(self) -> None:
        """Count the users left for a retry as failed: the batch will not try them again."""
        self.counts[Outcome.FAILED] += len(self.retry_user_ids)
        self.retry_user_ids = []

    def as_dict(self) -> dict[str, int]:
        """The batch's totals as its task returns them and its run counts them."""
        return {
            "done": self.counts[Outcome.DONE] + self.counts[Outcome.CHANGED],
            "changed": self.counts[Outcome.CHANGED],
            "failed": self.counts[Outcome.FAILED],
            "skipped": self.counts[Outcome.SKIPPED],
            "retrying": len(self.retry_user_ids),
        }


def run_resync(
    *,
    scope: str,
    scope_key: str,
    trigger: str,
    task_id: str,
    user_ids: QuerySet,
    maildomain_name: str = "",
    on_progress: Callable[[dict], None] = lambda meta: None,
) -> dict:
    """Start a run of `scope` over `user_ids` unless one is in progress, and fan it out."""
    with run_lock(scope_key=scope_key) as acquired:
        run = start_run(
            scope=scope,
            trigger=trigger,
            task_id=task_id,
            maildomain_name=maildomain_name,
            another_is_starting=not acquired,
        )
        if run.status == SyncRun.Status.RUNNING:
            fan_out(
                run=run,
                user_ids=user_ids.iterator(chunk_size=_STREAM_CHUNK),
                trigger=trigger,
                on_progress=lambda enqueued: on_progress(
                    {"run_id": run.pk, "users_enqueued": enqueued}
                ),
            )
    run.refresh_from_db()
    return {
        "run_id": run.pk,
        "scope": run.scope,
        "status": run.status,
        "users_enqueued": run.users_enqueued,
    }


def run_lock(*, scope_key: str) -> TTLLock:
    """The lock held while a run of this scope starts and fans out."""
    # Outlives the fan-out task's hard time limit, so only a killed fan-out leaves it behind.
    return TTLLock(f"resync:{scope_key}", ttl=settings.CELERY_TASK_TIME_LIMIT + 60)


def batch_expiry_seconds() -> int:
    """How long a batch may wait in the queue before it is dropped unrun.

    One resync interval: by then the next periodic run covers its users again, so a slow run
    never piles up behind the next one.
    """
    return settings.ENTITLEMENTS_RESYNC_INTERVAL


def start_run(
    *,
    scope: str,
    trigger: str,
    task_id: str,
    maildomain_name: str = "",
    another_is_starting: bool = False,
) -> SyncRun:
    """Create the run's row: running, or skipped when a run of the same scope is in progress.

    Call with the scope's run lock held (else pass `another_is_starting`), so two starts
    cannot both see no run in progress. A run whose batches may still be queued (younger
    than the batch expiry) is in progress; an older one still marked running lost batches to
    expiry and is closed as failed.
    """
    now = timezone.now()
    same_scope = SyncRun.objects.filter(
        scope=scope, maildomain_name=maildomain_name, status=SyncRun.Status.RUNNING
    )
    if not another_is_starting:
        expired_before = now - timedelta(seconds=batch_expiry_seconds())
        same_scope.filter(started_at__lt=expired_before).update(
            status=SyncRun.Status.FAILED, error_code="incomplete", finished_at=now
        )
    skipped = another_is_starting or same_scope.exists()
    # The blast-radius guard's budget, counted before any batch of the run revokes.
    budget = {} if skipped else asdict(new_run_budget())
    return SyncRun.objects.create(
        scope=scope,
        maildomain_name=maildomain_name,
        trigger=trigger,
        task_id=task_id,
        status=SyncRun.Status.SKIPPED if skipped else SyncRun.Status.RUNNING,
        finished_at=now if skipped else None,
        **budget,
    )


def fan_out(
    *,
    run: SyncRun,
    user_ids: Iterable,
    trigger: str,
    on_progress: Callable[[int], None] = lambda enqueued: None,
) -> int:
    """Send the users as batches on the bulk queue; return how many users were enqueued.

    The ids are streamed, never held all at once. `users_enqueued` is written once, after
    the last batch is sent: until then no batch can mistake a partial count for the total
    and close the run early.
    """
    enqueued = 0
    try:
        with current_app.producer_or_acquire() as producer:
            for number, batch in enumerate(
                _chunks(user_ids, settings.ENTITLEMENTS_SYNC_BATCH_SIZE)
            ):
                current_app.send_task(
                    SYNC_USERS_BATCH_TASK,
                    args=[[str(user_id) for user_id in batch], run.pk, trigger],
                    queue=BULK_QUEUE,
                    expires=batch_expiry_seconds(),
                    producer=producer,
                )
                enqueued += len(batch)
                if number % _PROGRESS_EVERY_BATCHES == 0:
                    on_progress(enqueued)
    except Exception:
        SyncRun.objects.filter(pk=run.pk).update(
            users_enqueued=enqueued,
            status=SyncRun.Status.FAILED,
            error_code="fanout_failed",
            finished_at=timezone.now(),
        )
        raise
    SyncRun.objects.filter(pk=run.pk).update(users_enqueued=enqueued)
    if enqueued == 0:
        SyncRun.objects.filter(pk=run.pk).update(
            status=SyncRun.Status.DONE, finished_at=timezone.now()
        )
    else:
        finish_if_complete(run_id=run.pk)
    return enqueued


def sync_batch(
    *,
    user_ids: list[str],
    trigger: str,
    task_id: str,
    revocation_guard: RevocationGuard | None = None,
) -> BatchOutcome:
    """Sync a batch of users: a small pool of threads fetches, this thread reconciles in bulk.

    Threads, not processes: fetching is waiting on the upstream, and it makes no database
    query. The answers that arrived within a short window are reconciled together in one
    transaction (a handful of queries however many users), then their locks are released, so
    a user's lock is held from before their fetch until just after their rights are committed.
    Users whose upstream was unavailable are listed for a retry of the batch. The run's task
    passes its `revocation_guard` (the run's budget), asked inside each reconcile.
    """
    outcome = BatchOutcome()
    if not user_ids:
        return outcome
    users = start_user_syncs(user_ids=user_ids)
    # Deleted between the fan-out and now: nothing left to sync.
    outcome.counts[Outcome.SKIPPED] += len(user_ids) - len(users)
    pending: queue.SimpleQueue = queue.SimpleQueue()
    for user in users:
        pending.put(user)
    arrived: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        try:
            while not stop.is_set():
                try:
                    user = pending.get_nowait()
                except queue.Empty:
                    return
                arrived.put(fetch_under_lock(user=user, task_id=task_id))
        finally:
            arrived.put(_THREAD_DONE)
            # A custom backend may use the database: a thread's connection must not leak.
            connections.close_all()

    threads = min(settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY, len(users))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sync-batch") as pool:
        for _ in range(threads):
            pool.submit(work)
        running = threads
        # Kept across an interruption, so that nothing taken off the queue is lost.
        gathered: list = []
        while running:
            try:
                _gather(arrived, gathered, running=running)
                running -= gathered.count(_THREAD_DONE)
                fetched = [item for item in gathered if item is not _THREAD_DONE]
                gathered.clear()
                _finish(fetched, outcome, trigger, task_id, revocation_guard)
            except SoftTimeLimitExceeded:
                # Finish the users in flight, start no new one; the rest goes to the retry.
                logger.warning(
                    "batch %s hit its soft time limit; untried users will retry", task_id
                )
                stop.set()
    while not pending.empty():
        outcome.retry_user_ids.append(str(pending.get_nowait().pk))
    return outcome


# What a batch thread sends when it has no more user to fetch.
_THREAD_DONE = object()
# How long the first answer waits for others to be reconciled with it: long enough to gather
# a few answers per transaction, short against the time a user's lock is held anyway.
_RECONCILE_WINDOW_SECONDS = 0.05


def _gather(arrived: queue.SimpleQueue, gathered: list, *, running: int) -> None:
    """Add the next answers to `gathered`: wait for one, then take more for a short window, or
    until every running thread said it is done."""
    if not gathered:
        gathered.append(arrived.get())
    deadline = time.monotonic() + _RECONCILE_WINDOW_SECONDS
    while gathered.count(_THREAD_DONE) < running:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            gathered.append(arrived.get(timeout=remaining))
        except queue.Empty:
            return


def _finish(
    fetched: list[FetchedUser],
    outcome: BatchOutcome,
    trigger: str,
    task_id: str,
    revocation_guard: RevocationGuard | None,
) -> None:
    """Record the fetched users' syncs, count them, release their locks."""
    counted: set[int] = set()
    try:
        answered = [item for item in fetched if item.answer is not None]
        for item, result in zip(
            answered, _reconcile(answered, trigger, task_id, revocation_guard), strict=True
        ):
            outcome.counts[outcome_of(result) if isinstance(result, SyncResult) else result] += 1
            counted.add(id(item))
        for item in fetched:
            if id(item) in counted:
                continue
            if item.unavailable is not None:
                record_sync_unavailable(
                    user=item.user, trigger=trigger, task_id=task_id, error=item.unavailable
                )
                outcome.retry_user_ids.append(str(item.user.pk))
            else:
                outcome.counts[item.outcome] += 1
            counted.add(id(item))
    except SoftTimeLimitExceeded:
        # Whatever was not recorded yet is tried again by the batch's retry.
        outcome.retry_user_ids += [str(item.user.pk) for item in fetched if id(item) not in counted]
        raise
    finally:
        for item in fetched:
            item.release()


def _reconcile(
    answered: list[FetchedUser],
    trigger: str,
    task_id: str,
    revocation_guard: RevocationGuard | None,
) -> list:
    """Each user's SyncResult, or the Outcome of a user whose reconcile failed.

    All together in one transaction; if that fails, one by one, so that one user's failure
    never costs the others their sync.
    """
    if not answered:
        return []
    answers = [(item.user, item.answer) for item in answered]
    try:
        return finish_user_syncs(
            answers=answers, trigger=trigger, task_id=task_id, revocation_guard=revocation_guard
        )
    except SoftTimeLimitExceeded:
        raise
    except Exception:
        logger.warning(
            "bulk reconcile of %d users failed; retrying one by one", len(answers), exc_info=True
        )
    results = []
    for answer in answers:
        try:
            [result] = finish_user_syncs(
                answers=[answer],
                trigger=trigger,
                task_id=task_id,
                revocation_guard=revocation_guard,
            )
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            if not User.objects.filter(pk=answer[0].pk).exists():
                # Deleted while their answer was fetched: nothing left to sync.
                result = Outcome.SKIPPED
            else:
                logger.exception("sync of user %s (%s) failed", answer[0].pk, trigger)
                result = Outcome.FAILED
        results.append(result)
    return results


def record_batch(*, run_id: int, outcome: BatchOutcome) -> None:
    """Add a batch's counts to its run (one UPDATE), then close the run if it was the last."""
    totals = outcome.as_dict()
    SyncRun.objects.filter(pk=run_id).update(
        users_done=F("users_done") + totals["done"],
        users_changed=F("users_changed") + totals["changed"],
        users_failed=F("users_failed") + totals["failed"],
        users_skipped=F("users_skipped") + totals["skipped"],
    )
    finish_if_complete(run_id=run_id)


def finish_if_complete(*, run_id: int) -> bool:
    """Mark the run done once every enqueued user is counted; True for the call that did it.

    Both the fan-out (after writing the total) and every batch (after adding its counts)
    call this, so whichever comes last closes the run, exactly once.
    """
    counted = F("users_done") + F("users_failed") + F("users_skipped")
    return bool(
        SyncRun.objects.filter(
            Q(pk=run_id, status=SyncRun.Status.RUNNING, users_enqueued__gt=0),
            Q(users_enqueued__lte=counted),
        ).update(status=SyncRun.Status.DONE, finished_at=timezone.now())
    )


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of at most `size` items."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
