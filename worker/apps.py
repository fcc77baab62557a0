"""Django app configuration for the Celery plumbing."""

from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate


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
