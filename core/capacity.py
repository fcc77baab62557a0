"""Whether the full resync fits in its interval at the rate DeployCenter allows, and what to
change when it does not."""

import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from core.models import SyncRun
from core.selectors import users_due_for_full_resync

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResyncCapacity:
    """A full run's users, the time the rate limit needs for them and the last run took,
    against the interval between runs; `ratio` above 1 means runs cannot keep up."""

    users: int
    rate_per_second: float  # 0: no rate limit
    interval_seconds: int
    needed_seconds: float  # users / rate: the shortest a full run can take
    last_run_seconds: float | None  # the last full run's duration (so far, if it still runs)

    @property
    def ratio(self) -> float:
        """The longer of the needed and the last run's time, over the interval."""
        return max(self.needed_seconds, self.last_run_seconds or 0) / self.interval_seconds

    @property
    def over(self) -> bool:
        return self.ratio > 1

    def advice(self) -> str:
        """The numbers and what to change, for a log line or the admin."""
        last = (
            f", the last run took {self.last_run_seconds:.0f} s"
            if self.last_run_seconds is not None
            else ""
        )
        rate = f"{self.rate_per_second:g} calls/s" if self.rate_per_second else "no rate limit"
        floor = max(self.needed_seconds, self.last_run_seconds or 0)
        return (
            f"a full resync of {self.users} users at {rate} needs {self.needed_seconds:.0f} s"
            f"{last}, against ENTITLEMENTS_RESYNC_INTERVAL_SECONDS={self.interval_seconds} "
            f"(ratio {self.ratio:.2f}): raise ENTITLEMENTS_RATE_LIMIT_PER_SECOND to at least "
            f"{self.users / self.interval_seconds:.1f} once DeployCenter's operators confirm "
            f"it can take that many calls, or set ENTITLEMENTS_RESYNC_INTERVAL_SECONDS to at "
            f"least {floor:.0f}; meanwhile every periodic run that starts while one still runs "
            f"is recorded skipped"
        )


def resync_capacity(*, now: datetime | None = None) -> ResyncCapacity:
    """The capacity from the last full run that sent its batches, or from counting the users
    a run would cover when none did yet."""
    return last_run_capacity(now=now) or _capacity(
        users=users_due_for_full_resync().count(), last_run_seconds=None
    )


def last_run_capacity(*, now: datetime | None = None) -> ResyncCapacity | None:
    """The capacity from the last full run that sent its batches (its users and duration, so
    far if it still runs); None before the first. One indexed read: cheap at every scrape."""
    run = (
        SyncRun.objects.filter(scope=SyncRun.Scope.ALL, users_enqueued__gt=0)
        .exclude(status=SyncRun.Status.SKIPPED)
        .order_by("-started_at")
        .only("started_at", "finished_at", "users_enqueued")
        .first()
    )
    if run is None:
        return None
    ended = run.finished_at or now or timezone.now()
    return _capacity(
        users=run.users_enqueued, last_run_seconds=(ended - run.started_at).total_seconds()
    )


def _capacity(*, users: int, last_run_seconds: float | None) -> ResyncCapacity:
    rate = settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND
    return ResyncCapacity(
        users=users,
        rate_per_second=rate,
        interval_seconds=settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS,
        needed_seconds=users / rate if rate else 0.0,
        last_run_seconds=last_run_seconds,
    )


def warn_if_over_capacity() -> ResyncCapacity:
    """Log a WARNING with the numbers when full runs cannot keep up with their interval."""
    capacity = resync_capacity()
    if capacity.over:
        logger.warning("resync over capacity: %s", capacity.advice())
    return capacity
