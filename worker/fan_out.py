"""Admin-wide resync runs on Celery: one at a time per scope, fanned out as batches."""

from collections.abc import Callable, Iterable

from celery import current_app
from django.conf import settings
from django.db.models import QuerySet

from core.chunks import chunked
from core.entitlements import TaskName, runs
from core.models import SyncRun, Trigger
from worker.locks import run_lock
from worker.queues import BULK_QUEUE

# Progress is written to the result backend every this many batches, not at every one.
_PROGRESS_EVERY_BATCHES = 20
# Ids fetched per round trip while streaming a run's users from the database.
_STREAM_CHUNK = 2000


def run_resync(
    *,
    scope: SyncRun.Scope,
    scope_key: str,
    trigger: Trigger,
    task_id: str,
    user_ids: QuerySet,
    maildomain_name: str = "",
    organization_siret: str = "",
    on_progress: Callable[[dict], None] = lambda meta: None,
) -> dict:
    """Start a run of `scope` over `user_ids` unless one is in progress, and fan it out.

    Returns the fan-out task's result: the run's id, and its status once every batch is
    sent ("running" while the batches work, "skipped" when another run was in progress).
    """
    with run_lock(scope_key=scope_key) as acquired:
        run = runs.start_run(
            scope=scope,
            trigger=trigger,
            task_id=task_id,
            maildomain_name=maildomain_name,
            organization_siret=organization_siret,
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
        "run_status": run.status,
        "users_enqueued": run.users_enqueued,
    }


def fan_out(
    *,
    run: SyncRun,
    user_ids: Iterable,
    trigger: Trigger,
    on_progress: Callable[[int], None] = lambda enqueued: None,
) -> int:
    """Send the users as batches on the bulk queue; return how many users were enqueued.

    The ids are streamed, never held all at once.
    """
    enqueued = 0
    try:
        with current_app.producer_or_acquire() as producer:
            for number, batch in enumerate(
                chunked(user_ids, settings.ENTITLEMENTS_SYNC_BATCH_SIZE)
            ):
                current_app.send_task(
                    TaskName.SYNC_USERS_BATCH,
                    args=[[str(user_id) for user_id in batch], run.pk, trigger],
                    queue=BULK_QUEUE,
                    expires=runs.batch_expiry_seconds(),
                    producer=producer,
                )
                enqueued += len(batch)
                if number % _PROGRESS_EVERY_BATCHES == 0:
                    on_progress(enqueued)
    except Exception:
        runs.record_fan_out_failed(run_id=run.pk, users_enqueued=enqueued)
        raise
    runs.record_fan_out(run_id=run.pk, users_enqueued=enqueued)
    return enqueued
