"""Admin-wide resync runs: one at a time per scope, fanned out as batches of the run's users."""

from collections.abc import Callable, Iterable

from celery import current_app
from django.conf import settings
from django.db.models import QuerySet

from core.chunks import chunked
from core.entitlements import runs
from core.locks import run_lock
from core.models import MailDomain, SyncRun, Trigger
from core.selectors import users_due_for_full_resync, users_of_domain, users_of_organisation
from core.task_names import TaskName

# Progress is written to the result backend every this many batches, not at every one.
_PROGRESS_EVERY_BATCHES = 20
# Ids fetched per round trip while streaming a run's users from the database.
_STREAM_CHUNK = 2000


def run_resync(
    *,
    trigger: Trigger,
    task_id: str,
    maildomain_id: str | None = None,
    on_progress: Callable[[dict], None] = lambda meta: None,
) -> dict:
    """Start a run over every admin (or one domain's) unless one is in progress; fan it out.

    Returns the fan-out task's result: the run's id, and its status once every batch is
    sent ("running" while the batches work, "skipped" when another run was in progress or
    the domain is unknown). `on_progress` is told how many users are enqueued so far.
    """
    if maildomain_id is None:
        scope, scope_key, name = SyncRun.Scope.ALL, "all", ""
        user_ids = users_due_for_full_resync()
    else:
        maildomain = MailDomain.objects.filter(pk=maildomain_id).first()
        if maildomain is None:
            return {"run_status": SyncRun.Status.SKIPPED, "reason": "unknown_domain"}
        scope, scope_key, name = SyncRun.Scope.DOMAIN, f"domain:{maildomain.pk}", maildomain.name
        user_ids = users_of_domain(maildomain=maildomain)
    return _run(
        scope=scope,
        scope_key=scope_key,
        maildomain_name=name,
        user_ids=user_ids,
        trigger=trigger,
        task_id=task_id,
        on_progress=on_progress,
    )


def run_organisation_resync(
    *,
    siret: str,
    scope_key: str,
    trigger: Trigger,
    task_id: str,
    on_progress: Callable[[dict], None] = lambda meta: None,
) -> dict:
    """Start a run over the users whose stored siret claim is `siret`, as run_resync does."""
    return _run(
        scope=SyncRun.Scope.ORGANISATION,
        scope_key=scope_key,
        organization_siret=siret,
        user_ids=users_of_organisation(siret=siret),
        trigger=trigger,
        task_id=task_id,
        on_progress=on_progress,
    )


def _run(
    *,
    scope: SyncRun.Scope,
    scope_key: str,
    user_ids: QuerySet,
    trigger: Trigger,
    task_id: str,
    on_progress: Callable[[dict], None],
    maildomain_name: str = "",
    organization_siret: str = "",
) -> dict:
    """Start the run under its scope's lock and, unless skipped, send its batches.

    A copy of the task delivered again (its first delivery was killed mid-way: a lost worker
    or broker connection) takes back the lock; it reports the run its first delivery fanned
    out, or starts a new one if that fan-out was cut short (runs.take_over_earlier_delivery).
    """
    with run_lock(scope_key=scope_key, owner=task_id) as acquired:
        run = runs.take_over_earlier_delivery(task_id=task_id) if acquired else None
        if run is None:
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
    """Send the users as batches (the worker routes them to the bulk queue); return how many
    users were enqueued. The ids are streamed, never held all at once."""
    enqueued = 0
    try:
        with current_app.producer_or_acquire() as producer:
            for number, batch in enumerate(
                chunked(user_ids, settings.ENTITLEMENTS_SYNC_BATCH_SIZE)
            ):
                current_app.send_task(
                    TaskName.SYNC_USERS_BATCH,
                    args=[[str(user_id) for user_id in batch], run.pk, trigger],
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
