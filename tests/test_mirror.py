"""The tests mirror the code: every module of core/ and worker/ has its own test file, and no
test returns before it asserts."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

# Modules without a test file of their own, each for a reason. Package __init__ files (the
# doors, tested through their names) and migrations (generated; tests/test_migration_* check
# the hand-written ones) are left out by rule.
WITHOUT_MIRROR = {
    # The app's ready() builds the entitlements backend: tests/entitlements/test_factory.py
    # proves a bad backend setting stops start-up.
    "core/apps.py",
}


def _modules() -> list[Path]:
    return sorted(
        path.relative_to(REPO)
        for package in ("core", "worker")
        for path in (REPO / package).rglob("*.py")
        if "migrations" not in path.parts and path.name != "__init__.py"
    )


def mirrored_test_file(module: Path) -> Path:
    """core/a/b.py -> tests/a/test_b.py, worker/a/b.py -> tests/worker/a/test_b.py; a
    management command's tests sit in commands/, a private module's (_b.py) in test_b.py."""
    parts = list(module.with_suffix("").parts)
    if parts[0] == "core":
        parts = parts[1:]
    folder = "/".join(parts[:-1]).replace("management/commands", "commands")
    return Path("tests", folder, f"test_{parts[-1].lstrip('_')}.py")


@pytest.mark.parametrize("module", [m for m in _modules() if str(m) not in WITHOUT_MIRROR], ids=str)
def test_each_module_has_its_mirrored_test_file(module):
    assert (REPO / mirrored_test_file(module)).is_file(), (
        f"{module} has no {mirrored_test_file(module)}"
    )


@pytest.mark.parametrize("module", sorted(WITHOUT_MIRROR))
def test_each_exception_is_a_module_still_without_a_mirror(module):
    assert (REPO / module).is_file()
    assert not (REPO / mirrored_test_file(Path(module))).exists()


def _returns_outside_nested_functions(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(child, ast.Return):
            yield child
        yield from _returns_outside_nested_functions(child)


def _test_functions():
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield path.relative_to(REPO), node


def test_no_test_returns_before_it_asserts():
    # A case that returns early passes without checking anything: select cases in
    # parametrize instead. (Helpers and fixtures may return; tests themselves never do.)
    returning = [
        f"{path}:{ret.lineno} {function.name}"
        for path, function in _test_functions()
        for ret in _returns_outside_nested_functions(function)
    ]
    assert returning == []
