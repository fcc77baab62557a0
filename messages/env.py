"""Typed reads of environment variables that name the variable when its value is wrong."""

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None else value.strip()


# Variables read under a name that was renamed since: (old, new), for one warning at start-up.
RENAMED_IN_USE: list[tuple[str, str]] = []


def renamed(new: str, *, old: str) -> str:
    """The name to read a renamed variable by: `new`, or `old` while only the old one is set.

    The old name keeps working (its errors name it); core's start-up logs one deprecation
    warning for it (RENAMED_IN_USE).
    """
    if _raw(new) is None and _raw(old) is not None:
        RENAMED_IN_USE.append((old, new))
        return old
    return new


def env_str(name: str, default: str = "") -> str:
    """Return a string variable, or the default when unset."""
    value = _raw(name)
    return default if value is None else value


def env_bool(name: str, default: bool) -> bool:
    """Return a boolean variable; only the usual spellings of true and false are accepted."""
    value = _raw(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be a boolean (true/false, 1/0, yes/no, on/off), got {value!r}"
    )


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """Return an integer variable, optionally bounded below."""
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    """Return a float variable, optionally bounded below."""
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """Return a comma-separated list variable, blanks dropped."""
    value = _raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_json(name: str, default, *, expect: type | None = None):
    """Return a JSON variable, optionally checking the type of its top-level value."""
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {error.msg}") from None
    if expect is not None and not isinstance(parsed, expect):
        raise ImproperlyConfigured(
            f"{name} must be a JSON {expect.__name__}, got {type(parsed).__name__}"
        )
    return parsed


def env_url(name: str, default: str, *, schemes: set[str]) -> str:
    """Return a URL variable whose scheme is one of `schemes`."""
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} is not a valid URL: {error}") from None
    if parts.scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name} must be a URL with scheme {', '.join(sorted(schemes))}; "
            f"got scheme {parts.scheme or '(none)'!r}"
        )
    return value


def fill_from_demo_env(*, base_dir: Path) -> Path | None:
    """Give a command run beside `make run` the demo's settings: when DATABASE_URL is unset (the
    demo's SQLite under DATA_DIR) and DATA_DIR holds the demo.env setup_demo wrote, its variables
    fill in those the environment does not set. Returns the file when it filled any."""
    if os.environ.get("DATABASE_URL"):
        return None
    path = Path(os.environ.get("DATA_DIR") or base_dir / "data") / "demo.env"
    if not path.is_file():
        return None
    # The parser `make run` starts the processes with (honcho -e), so both read the same values.
    from honcho.environ import parse

    missing = {
        name: value for name, value in parse(path.read_text()).items() if name not in os.environ
    }
    os.environ.update(missing)
    return path if missing else None
