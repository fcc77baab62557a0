"""Django app configuration for the Celery plumbing."""

import logging

from celery.signals import (
    beat_init,
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_ready,
)
from django.apps import AppConfig, apps
from django.db import connections
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


class WorkerConfig(AppConfig):
    name = "worker"
    verbose_name = "Entitlements worker"

    def ready(self):
        from worker.schedules import ensure_periodic_tasks

        # Sent once per migrate for django-celery-beat's app (this app has no models, so it
        # gets no post_migrate of its own).
        post_migrate.connect(
            ensure_periodic_tasks,
            sender=apps.get_app_config("django_celery_beat"),
            dispatch_uid="worker.ensure_periodic_tasks",
        )
        task_prerun.connect(recycle_database_connections, dispatch_uid="worker.recycle_db")
        task_postrun.connect(recycle_database_connections, dispatch_uid="worker.recycle_db_after")
        worker_process_shutdown.connect(forget_exited_process, dispatch_uid="worker.metrics")
        worker_ready.connect(warn_if_over_capacity, dispatch_uid="worker.capacity")
        beat_init.connect(warn_if_over_capacity, dispatch_uid="beat.capacity")


def recycle_database_connections(task=None, **kwargs) -> None:
    """Around each task, close the connections Django would close around a request: too old
    (DB_CONN_MAX_AGE), broken, or failing their health check; keep the others for the next.

    Settings set CELERY_DB_REUSE_MAX, so Celery no longer reopens a connection per task.
    """
    if task is not None and getattr(task.request, "is_eager", False):
        # An eager task runs inside its caller, whose connection and transaction are its own.
        return
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def forget_exited_process(pid=None, **kwargs) -> None:
    """A prefork child exits: drop its live gauges from the metrics it shared."""
    # Imported here: core.metrics reads the models, not loaded when this module is.
    from core import metrics

    metrics.process_exited(pid=pid)


def warn_if_over_capacity(**kwargs) -> None:
    """At a worker's or beat's start: log a WARNING when full runs cannot fit their interval."""
    from core.capacity import warn_if_over_capacity as warn

    try:
        warn()
    except Exception as error:
        # A database not reachable yet must not stop the worker: the admin and metrics say it.
        logger.warning("resync capacity unreadable at start: %s", type(error).__name__)
