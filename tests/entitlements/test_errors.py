"""core/entitlements/errors.py: one error tree; callers branch on the type, never on the text."""

import importlib
import inspect
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

import core.entitlements
from core.entitlements.errors import (
    EntitlementsConfigurationError,
    EntitlementsError,
    EntitlementsUnavailableError,
)


def test_an_unavailable_upstream_carries_its_error_code():
    error = EntitlementsUnavailableError("http_503")

    assert isinstance(error, EntitlementsError)
    assert error.error_code == "http_503"
    assert str(error) == "entitlements upstream unavailable (http_503)"


def test_a_configuration_error_stops_django_like_any_bad_setting():
    assert issubclass(EntitlementsConfigurationError, EntitlementsError)
    assert issubclass(EntitlementsConfigurationError, ImproperlyConfigured)


def _public_errors():
    package = Path(core.entitlements.__file__).parent
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent.parent).with_suffix("").parts
        module = importlib.import_module(".".join(parts).removesuffix(".__init__"))
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                yield value


def test_every_public_error_of_the_package_is_an_entitlements_error():
    errors = list(_public_errors())

    assert EntitlementsUnavailableError in errors
    assert [error for error in errors if not issubclass(error, EntitlementsError)] == []
