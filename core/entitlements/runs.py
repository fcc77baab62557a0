"""Resync runs (all admins, or one domain's): when one may start, how it counts, when it ends.

The rules of a SyncRun row, which the fan-out (`fan_out`) and the batches (`batches`) follow.
"""

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from core import metrics
from core.entitlements.configuration_errors import report_run_stopped
from core.entitlements.results import RunCategory, SyncResult
from core.entitlements.revocation_budget import new_run_budget
from core.models import CountedBatch, SyncRun, Trigger

logger = logging.getLogger(__name__)


# A run's error code once a configuration error stopped it: its batches ask no one else.
CONFIGURATION_ERROR = "configuration"
# A run's error code once it was closed unfinished: its batches were lost or expired unrun.
INCOMPLETE = "incomplete"
# A run's error code once its fan-out, killed before it sent every batch, was delivered again:
# the copy started a new run over every user, and this one's batches not yet run ask no one.
FAN_OUT_INTERRUPTED = "fanout_interrupted"
# The error codes of a run whose batches ask no one.
_STOPPED_ASKING = (CONFIGURATION_ERROR, FAN_OUT_INTERRUPTED)


@dataclass(slots=True)
class BatchTally:
    """What one batch did: users per run category, and the users worth trying again later."""

    counts: Counter = field(default_factory=Counter)
    retry_user_ids: list[str] = field(default_factory=list)

    def count(self, result: SyncResult | RunCategory) -> None:
        """Count one user: a finished sync by its run category, or a category given outright."""
        self.counts[result.run_category if isinstance(result, SyncResult) else result] += 1

    def give_up_retries(self) -> None:
        """Count the users left for a retry as failed: the batch will not try them again."""
        self.counts[RunCategory.FAILED] += len(self.retry_user_ids)
        self.retry_user_ids = []

    def as_dict(self) -> dict[str, int]:
        """The batch's totals as its task returns them and its run counts them."""
        return {
            "done": self.counts[RunCategory.DONE] + self.counts[RunCategory.CHANGED],
            "changed": self.counts[RunCategory.CHANGED],
            "failed": self.counts[RunCategory.FAILED],
            "skipped": self.counts[RunCategory.SKIPPED],
            "not_run": self.counts[RunCategory.NOT_RUN],
            "retrying": len(self.retry_user_ids),
        }


def batch_expiry_seconds() -> int:
    """How long a batch may wait in the queue before it is dropped unrun.

    One resync interval: by then the next periodic run covers its users again, so a slow run
    never piles up behind the next one.
    """
    return settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS


def start_run(
    *,
    scope: SyncRun.Scope,
    trigger: Trigger,
    task_id: str,
    maildomain_name: str = "",
    organization_siret: str = "",
    another_is_starting: bool = False,
) -> SyncRun:
    """Create the run's row: running, or skipped when a run of the same scope is in progress.

    Call with the scope's run lock held (else pass `another_is_starting`), so two starts
    cannot both see no run in progress. A run still marked running whose batches were lost
    (see `close_lost_runs`) is closed first: it never holds up the next one. The counted
    deliveries no batch can come back for are forgotten then (`forget_counted_batches`).
    """
    now = timezone.now()
    same_scope = SyncRun.objects.filter(
        scope=scope,
        maildomain_name=maildomain_name,
        organization_siret=organization_siret,
        status=SyncRun.Status.RUNNING,
    )
    if not another_is_starting:
        close_lost_runs()
        forget_counted_batches()
    skipped = another_is_starting or same_scope.exists()
    # The revocation budget, counted before any batch of the run revokes.
    budget = {} if skipped else asdict(new_run_budget())
    return SyncRun.objects.create(
        scope=scope,
        maildomain_name=maildomain_name,
        organization_siret=organization_siret,
        trigger=trigger,
        task_id=task_id,
        status=SyncRun.Status.SKIPPED if skipped else SyncRun.Status.RUNNING,
        finished_at=now if skipped else None,
        progressed_at=now,
        **budget,
    )


def take_over_earlier_delivery(*, task_id: str) -> SyncRun | None:
    """The run an earlier delivery of this fan-out task fanned out, if it finished sending.

    Call with the scope's run lock held. Celery delivers a fan-out task again, under the same
    id, when its worker was killed or terminated it on a lost broker connection (late acks).
    A run its first delivery left running without its total was cut short mid-way: it is
    closed failed (`fanout_interrupted`), its batches ask no one, and None is returned, so
    that the copy starts a new run over every user now rather than leave the users it had
    not sent for the next interval. A run whose fan-out had finished is returned as it is:
    the copy has nothing to send again.
    """
    if not task_id:
        return None
    # Runs are kept for ever: the indexed start time bounds the search to the last interval,
    # beyond which close_lost_runs has closed a run left running anyway.
    since = timezone.now() - timedelta(seconds=batch_expiry_seconds())
    earlier = SyncRun.objects.filter(task_id=task_id, started_at__gte=since).exclude(
        status=SyncRun.Status.SKIPPED
    )
    fanned_out = None
    for run in earlier.order_by("-started_at"):
        if run.status != SyncRun.Status.RUNNING or run.users_enqueued:
            fanned_out = fanned_out or run
            continue
        if SyncRun.objects.filter(pk=run.pk, status=SyncRun.Status.RUNNING).update(
            status=SyncRun.Status.FAILED,
            error_code=FAN_OUT_INTERRUPTED,
            finished_at=timezone.now(),
        ):
            logger.warning(
                "resync run %s closed as failed/%s: its fan-out task %s was stopped before it "
                "sent every batch and was delivered again; a new run covers every user",
                run.pk,
                FAN_OUT_INTERRUPTED,
                task_id,
            )
            _record_ended(run.pk)
    return fanned_out


def close_lost_runs() -> int:
    """Close as failed/incomplete every running run whose batches can no longer finish; return
    how many.

    A run is lost when no batch reported for ENTITLEMENTS_RUN_STALL_SECONDS (its tasks were
    lost, e.g. a Redis broker restarted without its data; a live run's batches report before
    each retry and at their end), or when it is older than the batch expiry (its batches
    expire unrun). The next run, and the sweep every minute, call this: a lost run ends within
    minutes and never holds up the next one. A batch of it that still turns up counts on the
    closed row.
    """
    now = timezone.now()
    stalled_before = now - timedelta(seconds=settings.ENTITLEMENTS_RUN_STALL_SECONDS)
    expired_before = now - timedelta(seconds=batch_expiry_seconds())
    lost = SyncRun.objects.filter(status=SyncRun.Status.RUNNING).filter(
        Q(progressed_at__lt=stalled_before)
        | Q(progressed_at__isnull=True, started_at__lt=stalled_before)
        | Q(started_at__lt=expired_before)
    )
    closed = 0
    for run_id in lost.values_list("pk", flat=True):
        if SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.RUNNING).update(
            status=SyncRun.Status.FAILED, error_code=INCOMPLETE, finished_at=now
        ):
            logger.warning(
                "resync run %s closed as failed/incomplete: no batch reported for %d s (its "
                "tasks were lost, e.g. the broker restarted without its data); the next run "
                "covers its users",
                run_id,
                settings.ENTITLEMENTS_RUN_STALL_SECONDS,
            )
            _record_ended(run_id)
            closed += 1
    return closed


def record_fan_out(*, run_id: int, users_enqueued: int) -> None:
    """Write the run's total once every batch is sent; close it if nothing was or all came back.

    Written once, after the last batch is sent: until then no batch can mistake a partial
    count for the total and close the run early.
    """
    SyncRun.objects.filter(pk=run_id).update(
        users_enqueued=users_enqueued, progressed_at=timezone.now()
    )
    if users_enqueued == 0:
        SyncRun.objects.filter(pk=run_id).update(
            status=SyncRun.Status.DONE, finished_at=timezone.now()
        )
        _record_ended(run_id)
    else:
        finish_if_complete(run_id=run_id)


def record_fan_out_failed(*, run_id: int, users_enqueued: int) -> None:
    """Close a run whose fan-out could not send all its batches."""
    SyncRun.objects.filter(pk=run_id).update(
        users_enqueued=users_enqueued,
        status=SyncRun.Status.FAILED,
        error_code="fanout_failed",
        finished_at=timezone.now(),
    )
    _record_ended(run_id)


def record_batch(*, run_id: int, tally: BatchTally, delivery: str) -> None:
    """Add a batch's counts to its run, and close the run if it was the last, in one transaction.

    Once per `delivery` (a batch task's id and try), recorded in that transaction: a batch
    that ran to its end but whose acknowledgement was lost with the broker's connection is
    delivered again and runs again (its syncs change nothing the second time); its users must
    not count twice. A batch killed while counting (a worker terminates its running tasks when
    its broker connection drops) counted nothing, and its copy delivered again counts.
    """
    totals = tally.as_dict()
    with transaction.atomic():
        if not _count_delivery_once(run_id=run_id, delivery=delivery):
            logger.info(
                "run %s: batch %s not counted: counted already (delivered again), or run gone",
                run_id,
                delivery,
            )
            return
        SyncRun.objects.filter(pk=run_id).update(
            users_done=F("users_done") + totals["done"],
            users_changed=F("users_changed") + totals["changed"],
            users_failed=F("users_failed") + totals["failed"],
            users_skipped=F("users_skipped") + totals["skipped"],
            users_not_run=F("users_not_run") + totals["not_run"],
            progressed_at=timezone.now(),
        )
        ended = _close_if_complete(run_id=run_id)
    metrics.run_users_counted(counts=totals)
    if ended:
        _record_ended(run_id)


# Inserts nothing when the delivery is there already, or its run is not.
_COUNT_DELIVERY_ONCE = (
    "INSERT INTO core_countedbatch (delivery, run_id) SELECT %s, id FROM core_syncrun "
    "WHERE id = %s ON CONFLICT DO NOTHING"
)


def _count_delivery_once(*, run_id: int, delivery: str) -> bool:
    """Record `delivery` as counted in its run (inside the caller's transaction); False when it
    was already, or the run is gone. A copy counting at the same moment waits on the row's key
    until the first commits, then finds it."""
    with connection.cursor() as cursor:
        cursor.execute(_COUNT_DELIVERY_ONCE, [delivery, run_id])
        return cursor.rowcount == 1


def forget_counted_batches() -> int:
    """Delete the counted deliveries that no batch can come back for; return how many.

    A batch's message is dropped unrun once it is older than `batch_expiry_seconds`, so the
    deliveries of runs that ended longer ago than that are kept for nothing. Run ids grow with
    time: every row below the oldest run still running or ended since then goes.
    """
    ended_before = timezone.now() - timedelta(seconds=batch_expiry_seconds())
    oldest_kept = (
        SyncRun.objects.filter(Q(status=SyncRun.Status.RUNNING) | Q(finished_at__gte=ended_before))
        .order_by("pk")
        .values_list("pk", flat=True)
        .first()
    )
    forgotten = CountedBatch.objects.all()
    if oldest_kept is not None:
        forgotten = forgotten.filter(run_id__lt=oldest_kept)
    return forgotten.delete()[0]


def stop_run_on_configuration_error(*, run_id: int, error_code: str) -> bool:
    """Mark a running run failed (`configuration`) and report it, once; True for that call.

    The batches of the run that start later, or are still fetching, then ask no one else:
    every further call would be refused the same way.
    """
    stopped = bool(
        SyncRun.objects.filter(pk=run_id, status=SyncRun.Status.RUNNING).update(
            status=SyncRun.Status.FAILED,
            error_code=CONFIGURATION_ERROR,
            finished_at=timezone.now(),
        )
    )
    if stopped:
        report_run_stopped(run_id=run_id, error_code=error_code)
        _record_ended(run_id)
    return stopped


def stopped_asking(*, run_id: int) -> bool:
    """Whether the run's batches must ask no one: a configuration error stopped it (every
    call would be refused), or a new run replaced its interrupted fan-out."""
    return SyncRun.objects.filter(
        pk=run_id, status=SyncRun.Status.FAILED, error_code__in=_STOPPED_ASKING
    ).exists()


def finish_if_complete(*, run_id: int) -> bool:
    """Mark the run done once every enqueued user is counted; True for the call that did it.

    Both the fan-out (after writing the total) and every batch (after adding its counts)
    close a complete run, so whichever comes last closes it, exactly once.
    """
    ended = _close_if_complete(run_id=run_id)
    if ended:
        _record_ended(run_id)
    return ended


def _close_if_complete(*, run_id: int) -> bool:
    """The UPDATE that marks a complete running run done; True when it did."""
    counted = F("users_done") + F("users_failed") + F("users_skipped") + F("users_not_run")
    return bool(
        SyncRun.objects.filter(
            Q(pk=run_id, status=SyncRun.Status.RUNNING, users_enqueued__gt=0),
            Q(users_enqueued__lte=counted),
        ).update(status=SyncRun.Status.DONE, finished_at=timezone.now())
    )


def _record_ended(run_id: int) -> None:
    """Report a run that just ended to the metrics: one read, once per run."""
    run = SyncRun.objects.get(pk=run_id)
    if run.status == SyncRun.Status.FAILED:
        metrics.run_failed(reason=run.error_code)
    assert run.finished_at is not None, "every caller ends the run first"
    metrics.run_ended(
        scope=run.scope,
        status=run.status,
        seconds=(run.finished_at - run.started_at).total_seconds(),
        users=run.users_done + run.users_failed + run.users_skipped,
    )
