"""The layer rules of docs/architecture.md, read from the source: who may import whom."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
APPLICATION = sorted(
    path
    for package in ("core", "worker", "messages")
    for path in (REPO / package).rglob("*.py")
    if "migrations" not in path.parts
)
MAX_MODULE_LINES = 400


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


# Each rule is checked on the modules it is about, so that no case passes without asserting.
CORE = [path for path in APPLICATION if _module(path).startswith("core.")]
OUTSIDE_ENTITLEMENTS = [
    path for path in APPLICATION if not _module(path).startswith("core.entitlements")
]


def _imports(path: Path) -> list[str]:
    """Every module a file imports from, by absolute name (`from x import y` gives x)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", CORE, ids=_module)
def test_core_never_imports_the_worker(path):
    assert not [name for name in _imports(path) if name.split(".")[0] == "worker"]


@pytest.mark.parametrize("path", OUTSIDE_ENTITLEMENTS, ids=_module)
def test_outside_the_package_entitlements_are_used_through_their_door(path):
    inner = [name for name in _imports(path) if name.startswith("core.entitlements.")]
    # A backend is an extension point: custom backends subclass the base interface.
    allowed = {"core.entitlements.backends.base", *_READERS_PAST_THE_DOOR.get(_module(path), ())}
    assert [name for name in inner if name not in allowed] == []


# Who may read the package past its door: the backend's configuration where it is built (the
# app's start-up, where a wrong backend stops every process, and the admin showing the claims
# forwarded, the login's claim policy keeping only the claims the backend forwards in the shape
# it expects), and the receipt's type for annotations (the door gives receipts, not the type).
_READERS_PAST_THE_DOOR = {
    "core.apps": {"core.entitlements.factory"},
    "core.admin.common": {"core.entitlements.factory"},
    "core.authentication": {"core.entitlements.factory", "core.entitlements.receipts"},
    "core.management.commands.simulate_login": {"core.entitlements.factory"},
    # The dry run of a run holds revocations past the budget a run starting now would get.
    "core.management.commands.sync_entitlements": {
        "core.entitlements.receipts",
        "core.entitlements.revocation_budget",
    },
}


def test_the_door_exports_at_most_twelve_names_and_no_module():
    import types

    import core.entitlements as door

    assert len(door.__all__) <= 12
    assert not [name for name in door.__all__ if isinstance(getattr(door, name), types.ModuleType)]


def test_the_metrics_never_import_the_entitlements_package():
    """core.metrics is imported by the package: importing it back would make a cycle."""
    assert not [
        name
        for name in _imports(REPO / "core" / "metrics.py")
        if name.startswith("core.entitlements")
    ]


@pytest.mark.parametrize(
    "path",
    [path for path in APPLICATION if path.relative_to(REPO).parts[0] != "messages"],
    ids=_module,
)
def test_no_module_of_core_or_worker_is_over_the_size_a_reader_holds(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


def test_every_error_of_the_entitlements_package_is_an_entitlements_error():
    """Public ones: a private error (a leading underscore) never leaves its module."""
    import inspect
    import pkgutil
    from importlib import import_module

    import core.entitlements as package
    from core.entitlements.errors import EntitlementsError

    errors = [
        error
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        for name, error in inspect.getmembers(import_module(module.name), inspect.isclass)
        if issubclass(error, Exception)
        and error.__module__ == module.name
        and not name.startswith("_")
    ]

    assert errors, "the package defines errors"
    assert [error for error in errors if not issubclass(error, EntitlementsError)] == []
