"""Django app configuration for the Celery plumbing."""

from django.apps import AppConfig


class WorkerConfig(AppConfig):
    name = "worker"
    verbose_name = "Entitlements worker"
