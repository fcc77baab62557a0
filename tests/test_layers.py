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
    assert [name for name in inner if name != "core.entitlements.backends.base"] == []


@pytest.mark.parametrize(
    "path",
    [path for path in APPLICATION if path.relative_to(REPO).parts[0] != "messages"],
    ids=_module,
)
def test_no_module_of_core_or_worker_is_over_the_size_a_reader_holds(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES
