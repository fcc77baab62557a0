"""The Django project: settings, URLs, WSGI and the Celery app."""

from messages.celery_app import app as celery_app

__all__ = ("celery_app",)
