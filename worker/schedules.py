"""The beat schedule (django-celery-beat): created once at migrate time, then the admin's."""

import json

from django.apps import apps as global_apps
from django.conf import settings
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from core.models import Trigger
from core.task_names import TaskName

FULL_RESYNC_NAME = "entitlements: resync all admins"
SWEEP_NAME = "entitlements: sweep sync requests that never ran"
SWEEP_EVERY_SECONDS = 60


def ensure_periodic_tasks(*, apps=global_apps, **kwargs) -> None:
    """post_migrate receiver: create the full resync and the sweep if they do not exist.

    Looked up by name and never updated: once created, the schedule belongs to the operators
    who edit it in the Django admin, and a later migrate keeps their edits. An operator who
    wants a schedule gone disables it; a deleted one comes back at the next migrate.
    """
    try:
        # The migration state `migrate` passes; a flush passes none (then all tables exist).
        apps.get_model("django_celery_beat", "PeriodicTask")
    except LookupError:
        # beat's tables are not migrated yet (a partial `migrate`): next time.
        return
    resync_every = settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS
    _ensure(
        name=FULL_RESYNC_NAME,
        task=TaskName.SYNC_ALL_ADMINS,
        every_seconds=resync_every,
        kwargs={"trigger": Trigger.PERIODIC},
        description="Re-syncs every admin so upstream revocations land for everyone.",
    )
    _ensure(
        name=SWEEP_NAME,
        task=TaskName.SWEEP_PENDING_SYNCS,
        every_seconds=SWEEP_EVERY_SECONDS,
        kwargs={},
        description="Enqueues recorded sync requests that never reached a worker.",
    )


def _ensure(*, name: str, task: str, every_seconds: int, kwargs: dict, description: str) -> None:
    """Create one periodic task, expiring after one period, unless its name exists."""
    if PeriodicTask.objects.filter(name=name).exists():
        return
    interval = IntervalSchedule.objects.filter(
        every=every_seconds, period=IntervalSchedule.SECONDS
    ).first() or IntervalSchedule.objects.create(
        every=every_seconds, period=IntervalSchedule.SECONDS
    )
    # Saved through the real model, so a running beat sees the change (django-celery-beat
    # tracks changes with model signals).
    PeriodicTask.objects.get_or_create(
        name=name,
        defaults={
            "task": task,
            "interval": interval,
            "kwargs": json.dumps(kwargs),
            # A run that could not start within one period is replaced by the next one.
            "expire_seconds": every_seconds,
            "description": description,
        },
    )
