"""The admin's index: what an operator checks first, each with a link to its records."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.urls import reverse

from core.admin.run_chart import duration_text
from core.capacity import resync_capacity
from core.entitlements import upstream_status
from core.models import FAILED_SYNC_STATUSES, SyncRun
from core.selectors import (
    admin_freshness,
    failed_syncs_since,
    full_resync_schedule,
    latest_run,
    pending_held_revocations,
    runs_skipped_since,
    waiting_sync_requests,
)

# Failed syncs are counted over this window.
FAILED_WINDOW = timedelta(hours=1)
# Runs skipped because one was still running are counted over this window.
SKIPPED_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class NextRun:
    """When beat sends the next full resync: `at` None when it is due at beat's next tick."""

    at: datetime | None
    every: str
    url: str


def service_overview(*, now: datetime) -> dict:
    """The figures of the index's "Service at a glance" panel, with the links to their lists."""
    failed_since = now - FAILED_WINDOW
    skipped_since = now - SKIPPED_WINDOW
    run = latest_run()
    interval = timedelta(seconds=settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS)
    users_url = reverse("admin:core_user_changelist")
    freshness = admin_freshness(now=now, interval=interval)
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
        "freshness": freshness,
        "oldest_age": duration_text(freshness.max_age) if freshness.max_age is not None else "",
        "interval": duration_text(interval.total_seconds()),
        "stale_url": users_url + "?" + urlencode({"unconfirmed_intervals": "2"}),
        "capacity": resync_capacity(now=now),
        "skipped_runs": runs_skipped_since(since=skipped_since).count(),
        "skipped_runs_url": reverse("admin:core_syncrun_changelist")
        + "?"
        + urlencode(
            {
                "status__exact": SyncRun.Status.SKIPPED,
                "started_at__gte": skipped_since.isoformat(timespec="seconds"),
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
