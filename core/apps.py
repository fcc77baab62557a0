"""Django app configuration for the domain."""

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Mail domains and entitlements"
    default_auto_field = "django.db.models.BigAutoField"
