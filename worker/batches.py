"""A batch of a run's users: threads fetch their answers, this thread reconciles them in bulk."""

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connections

from core.entitlements import EntitlementsUnavailableError, Priority, SyncResult, runs, sync
from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.models import Trigger, User
from worker.locks import TTLLock, user_lock

BatchOutcome = runs.BatchOutcome
Outcome = runs.Outcome

logger = logging.getLogger(__name__)

# How long the first answer waits for others to be reconciled with it: long enough to gather
# a few answers per transaction, short against the time a user's lock is held anyway.
_RECONCILE_WINDOW_SECONDS = 0.05


@dataclass(slots=True)
class FetchedUser:
    """One user of a batch after the fetch: their answer (held under their lock), the upstream
    error to retry, or already an outcome (lock held elsewhere, failure, not asked because a
    configuration error stopped the batch)."""

    user: User
    lock: TTLLock | None = None
    answer: UpstreamAnswer | None = None
    unavailable: EntitlementsUnavailableError | None = None
    outcome: Outcome | None = None
    not_asked: bool = False

    def release(self) -> None:
        """Free the user's lock, once their sync is recorded."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


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
        if answer.kind is AnswerKind.CONFIGURATION and not self._event.is_set():
            self.error_code = answer.error_code
            self._event.set()


def sync_batch(
    *,
    user_ids: list[str],
    trigger: Trigger,
    task_id: str,
    revocation_budget: runs.RunRevocationBudget | None = None,
    run_id: int | None = None,
) -> BatchOutcome:
    """Sync a batch of users: a small pool of threads fetches, this thread reconciles in bulk.

    Threads, not processes: fetching is waiting on the upstream, and it makes no database
    query. The answers that arrived within a short window are reconciled together in one
    transaction (a handful of queries however many users), then their locks are released, so
    a user's lock is held from before their fetch until just after their rights are committed.
    Users whose upstream was unavailable are listed for a retry of the batch, and so are those
    not fetched yet when the task hits its soft time limit. The run's task passes its
    `revocation_budget`, asked inside each reconcile, and its `run_id`: a configuration
    error (the upstream refuses our key) stops the batch and the run; the users not asked
    then count as failed, and nobody is retried.
    """
    outcome = BatchOutcome()
    if not user_ids:
        return outcome
    if run_id is not None and runs.stopped_by_configuration_error(run_id=run_id):
        # Another batch of the run found the configuration wrong: asking would be refused.
        sync.record_syncs_not_run(
            user_ids=user_ids,
            trigger=trigger,
            task_id=task_id,
            error_code=runs.CONFIGURATION_ERROR,
        )
        outcome.counts[Outcome.FAILED] += len(user_ids)
        return outcome
    users = sync.start_user_syncs(user_ids=user_ids)
    # Deleted between the fan-out and now: nothing left to sync.
    outcome.counts[Outcome.SKIPPED] += len(user_ids) - len(users)
    threads = min(settings.ENTITLEMENTS_SYNC_BATCH_CONCURRENCY, len(users))
    stop = _ConfigurationStop()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sync-batch") as pool:
        pending = {
            pool.submit(_fetch, user=user, trigger=trigger, task_id=task_id, stop=stop): user
            for user in users
        }
        while pending:
            try:
                arrived = _gather(pending)
                fetched = [future.result() for future in arrived]
                for future in arrived:
                    del pending[future]
                _finish(fetched, outcome, trigger, task_id, revocation_budget, stop=stop)
                if stop and run_id is not None and not stop.run_stopped:
                    runs.stop_run_on_configuration_error(run_id=run_id, error_code=stop.error_code)
                    stop.run_stopped = True
            except SoftTimeLimitExceeded:
                # Finish the users in flight, start no new one; the rest goes to the retry.
                logger.warning(
                    "batch %s hit its soft time limit; untried users will retry", task_id
                )
                for future, user in list(pending.items()):
                    if future.cancel():
                        del pending[future]
                        outcome.retry_user_ids.append(str(user.pk))
    return outcome


def _fetch(*, user: User, trigger: Trigger, task_id: str, stop: _ConfigurationStop) -> FetchedUser:
    """A pool thread's work for one user; nothing once a configuration error stopped the batch."""
    if stop:
        return FetchedUser(user=user, outcome=Outcome.FAILED, not_asked=True)
    try:
        fetched = fetch_under_lock(user=user, trigger=trigger, task_id=task_id)
        if fetched.answer is not None:
            stop.see(fetched.answer)
        return fetched
    finally:
        # A custom backend may use the database: a thread's connection must not leak.
        connections.close_all()


def fetch_under_lock(*, user: User, trigger: Trigger, task_id: str) -> FetchedUser:
    """Take the user's lock and fetch their answer for a batch; the lock stays held.

    The batch's task id owns the lock, so a redelivered batch takes back what its killed run
    left. Never raises for one user: a batch goes on whatever happens to one of its users.
    """
    lock = user_lock(user.pk, owner=task_id)
    if not lock.acquire():
        # Another sync of this user is running now: it is at least as fresh as this run.
        return FetchedUser(user=user, outcome=Outcome.SKIPPED)
    try:
        # Bulk priority: a full run leaves the rate limit's reserve to login syncs. The trigger
        # says how fresh: a run a person started asks now, the periodic run may use the cache.
        answer = sync.fetch_user_answer(user=user, trigger=trigger, priority=Priority.BULK)
    except EntitlementsUnavailableError as error:
        return FetchedUser(user=user, lock=lock, unavailable=error)
    except Exception:
        lock.release()
        # Logged with its traceback (Sentry gets it), without the user's email or claims.
        logger.exception("sync of user %s failed while fetching", user.pk)
        return FetchedUser(user=user, outcome=Outcome.FAILED)
    return FetchedUser(user=user, lock=lock, answer=answer)


def _gather(pending: dict[Future, User]) -> set[Future]:
    """The fetches that ended: wait for one, then for the others a short window."""
    arrived, running = wait(pending, return_when=FIRST_COMPLETED)
    if running:
        more, _ = wait(running, timeout=_RECONCILE_WINDOW_SECONDS)
        arrived |= more
    return arrived


def _finish(
    fetched: list[FetchedUser],
    outcome: BatchOutcome,
    trigger: Trigger,
    task_id: str,
    revocation_budget: runs.RunRevocationBudget | None,
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
            outcome.counts[
                runs.outcome_of(result) if isinstance(result, SyncResult) else result
            ] += 1
            counted.add(id(item))
        not_asked = [item.user.pk for item in fetched if item.not_asked]
        if not_asked:
            sync.record_syncs_not_run(
                user_ids=not_asked,
                trigger=trigger,
                task_id=task_id,
                error_code=runs.CONFIGURATION_ERROR,
            )
        for item in fetched:
            if id(item) in counted:
                continue
            if item.unavailable is not None:
                sync.record_sync_unavailable(
                    user=item.user, trigger=trigger, task_id=task_id, error=item.unavailable
                )
                if stop:
                    outcome.count(Outcome.FAILED)
                else:
                    outcome.retry_user_ids.append(str(item.user.pk))
            else:
                assert item.outcome is not None, "a user neither answered nor unavailable has one"
                outcome.count(item.outcome)
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
    trigger: Trigger,
    task_id: str,
    revocation_budget: runs.RunRevocationBudget | None,
) -> Sequence[SyncResult | Outcome]:
    """Each user's SyncResult, or the Outcome of a user whose reconcile failed.

    All together in one transaction; if that fails, one by one, so that one user's failure
    never costs the others their sync.
    """
    if not answered:
        return []
    # Every one has its answer: the test only narrows the type.
    answers = [(item.user, item.answer) for item in answered if item.answer is not None]
    try:
        return sync.finish_user_syncs(
            answers=answers, trigger=trigger, task_id=task_id, revocation_budget=revocation_budget
        )
    except SoftTimeLimitExceeded:
        raise
    except Exception:
        logger.warning(
            "bulk reconcile of %d users failed; retrying one by one", len(answers), exc_info=True
        )
    results: list[SyncResult | Outcome] = []
    result: SyncResult | Outcome
    for answer in answers:
        try:
            [result] = sync.finish_user_syncs(
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
                result = Outcome.SKIPPED
            else:
                logger.exception("sync of user %s (%s) failed", answer[0].pk, trigger)
                result = Outcome.FAILED
        results.append(result)
    return results
