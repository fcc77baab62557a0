"""Django app configuration for the domain."""

import logging

from django.apps import AppConfig

from messages.env import RENAMED_IN_USE

logger = logging.getLogger(__name__)


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
        for old, new in RENAMED_IN_USE:
            logger.warning(
                "environment variable %s is deprecated: rename it %s (read under its old name "
                "until then)",
                old,
                new,
            )
