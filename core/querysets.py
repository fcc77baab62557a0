"""Querysets of the domain's tables: where rows stand, as SQL the models' methods agree with."""

from datetime import datetime

from django.db import models
from django.db.models import F, Q, Value


class SyncStateQuerySet(models.QuerySet):
    """Sync states by where they stand in a sync's life (docs/entitlements.md, "A sync's life").

    A request sets `requested_at`; sending its task sets `enqueued_at`; a sync sets
    `started_at` when it starts and `finished_at` when it ends. `finished_at` is not cleared
    at a start, so a sync runs while `finished_at` is missing or older than `started_at`, and
    a request is served by a sync that started at or after it.
    """

    def running(self) -> "SyncStateQuerySet":
        """States whose sync has started and not finished since."""
        return self.filter(started_at__isnull=False).filter(
            Q(finished_at__isnull=True) | Q(finished_at__lt=F("started_at"))
        )

    def unserved(self) -> "SyncStateQuerySet":
        """States with a request that no sync started after."""
        return self.filter(requested_at__isnull=False).filter(
            Q(started_at__isnull=True) | Q(started_at__lt=F("requested_at"))
        )

    def without_task_waiting(self, *, queued_since: datetime) -> "SyncStateQuerySet":
        """States with no task queued at or after `queued_since` that has not started yet."""
        return self.filter(no_task_waiting(queued_since=queued_since))


def no_task_waiting(*, queued_since: datetime | Value) -> Q:
    """The condition of `without_task_waiting`, to combine with others in one filter (or to
    compile once with a `core.compiled_updates.Param` for `queued_since`)."""
    return (
        Q(enqueued_at__isnull=True)
        | Q(enqueued_at__lt=queued_since)
        | Q(started_at__gte=F("enqueued_at"))
    )
