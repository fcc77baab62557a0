"""The admin's index: what an operator checks first, each with a link to its records."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.urls import reverse

from core.entitlements import upstream_status
from core.models import FAILED_SYNC_STATUSES, SyncRun
from core.selectors import (
    failed_syncs_since,
    full_resync_schedule,
    latest_run,
    pending_held_revocations,
    waiting_sync_requests,
)

# Failed syncs are counted over this window.
FAILED_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class NextRun:
    """When beat sends the next full resync: `at` None when it is due at beat's next tick."""

    at: datetime | None
    every: str
    url: str


def service_overview(*, now: datetime) -> dict:
    """The figures of the index's "Service at a glance" panel, with the links to their lists."""
    failed_since = now - FAILED_WINDOW
    run = latest_run()
    return {
        "last_run": run,
        "last_run_url": reverse("admin:core_syncrun_change", args=[run.pk]) if run else "",
        "runs_url": reverse("admin:core_syncrun_changelist"),
        "running": bool(run and run.status == SyncRun.Status.RUNNING),
        "next_run": _next_run(now=now),
        "upstream_status": upstream_status(),
        "held_pending": pending_held_revocations().count(),
        "held_url": reverse("admin:core_heldrevocation_changelist")
        + "?"
        + urlencode({"resolution__exact": "pending"}),
        "waiting": waiting_sync_requests().count(),
        # The sync states, latest request first (the list's fourth column).
        "waiting_url": reverse("admin:core_entitlementsyncstate_changelist") + "?o=-4",
        "failed": failed_syncs_since(since=failed_since).count(),
        "failed_url": reverse("admin:core_entitlementsyncstate_changelist")
        + "?"
        + urlencode(
            {
                "status__in": ",".join(FAILED_SYNC_STATUSES),
                "finished_at__gte": failed_since.isoformat(timespec="seconds"),
            }
        ),
    }


def _next_run(*, now: datetime) -> NextRun | None:
    """The full resync's next run by its interval, None when the schedule is disabled."""
    task = full_resync_schedule()
    if task is None:
        return None
    url = reverse("admin:django_celery_beat_periodictask_change", args=[task.pk])
    if task.interval is None:
        return NextRun(at=None, every=str(task.scheduler), url=url)
    period = timedelta(**{task.interval.period: task.interval.every})
    due = task.last_run_at + period if task.last_run_at else None
    return NextRun(at=due if due and due > now else None, every=str(task.interval), url=url)
