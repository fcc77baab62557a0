"""Builds the configured entitlements backend once, refusing bad settings by their name."""

import functools
import inspect
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from core.entitlements.backends.base import EntitlementsBackend
from core.entitlements.errors import EntitlementsConfigurationError


def build_backend(*, path: str, parameters: Mapping[str, Any]) -> EntitlementsBackend:
    """Import the backend class at `path` and build it with `parameters` as keyword arguments."""
    try:
        backend_class = import_string(path)
    except ImportError as error:
        raise EntitlementsConfigurationError(
            f"ENTITLEMENTS_BACKEND {path!r} cannot be imported: {error}"
        ) from None
    if not (isinstance(backend_class, type) and issubclass(backend_class, EntitlementsBackend)):
        raise EntitlementsConfigurationError(
            f"ENTITLEMENTS_BACKEND {path!r} is not an EntitlementsBackend subclass"
        )
    if not isinstance(parameters, Mapping):
        raise EntitlementsConfigurationError(
            "ENTITLEMENTS_BACKEND_PARAMETERS must be a JSON object"
        )
    name = backend_class.__name__
    try:
        # Bind first: a missing or unknown parameter is named by the signature, not by a
        # TypeError raised from somewhere inside the constructor.
        inspect.signature(backend_class).bind(**parameters)
    except TypeError as error:
        raise EntitlementsConfigurationError(
            f"ENTITLEMENTS_BACKEND_PARAMETERS do not fit {name}: {error}"
        ) from None
    try:
        return backend_class(**parameters)
    except ValueError as error:
        raise EntitlementsConfigurationError(
            f"ENTITLEMENTS_BACKEND_PARAMETERS are invalid for {name}: {error}"
        ) from None


@functools.cache
def get_backend() -> EntitlementsBackend:
    """The backend named by the settings, built on first use and shared by the process."""
    return build_backend(
        path=settings.ENTITLEMENTS_BACKEND, parameters=settings.ENTITLEMENTS_BACKEND_PARAMETERS
    )


def forwarded_claim_names() -> list[str]:
    """The OIDC claims the configured backend forwards upstream; login stores exactly these."""
    return get_backend().forwarded_claim_names


def forwarded_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """A login's forwarded claims that have the shape the configured backend expects."""
    return get_backend().forwarded_claims(claims)


@receiver(setting_changed)
def _forget_backend(*, setting: str, **kwargs) -> None:
    """Tests that override the backend settings get a backend built from the new values."""
    if setting in ("ENTITLEMENTS_BACKEND", "ENTITLEMENTS_BACKEND_PARAMETERS"):
        get_backend.cache_clear()
