"""Error types of the entitlements engine; callers branch on the type, never on the text."""

from django.core.exceptions import ImproperlyConfigured


class EntitlementsError(Exception):
    """Base of every error the entitlements engine raises."""


class EntitlementsUnavailableError(EntitlementsError):
    """The upstream could not answer and no stale answer is usable: transient, retry later."""

    def __init__(self, error_code: str):
        super().__init__(f"entitlements upstream unavailable ({error_code})")
        self.error_code = error_code


class EntitlementsConfigurationError(EntitlementsError, ImproperlyConfigured):
    """The entitlements settings are wrong; the message names the setting at fault."""
