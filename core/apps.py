"""Django app configuration for the domain."""

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Mail domains and entitlements"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from core.entitlements.factory import get_backend

        # Build the entitlements backend now: a wrong ENTITLEMENTS_BACKEND(_PARAMETERS) stops
        # every process at start-up (web, worker, beat, manage.py) with a message naming it,
        # instead of failing each sync later.
        get_backend()
