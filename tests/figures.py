"""Figures measured by tests, printed in pytest's terminal summary for docs/reliability.md."""

from collections.abc import Callable

_reporters: list[Callable[[], list[str]]] = []


def reporter(function: Callable[[], list[str]]) -> Callable[[], list[str]]:
    """Register a function returning the lines a test module measured ([] if it did not run)."""
    _reporters.append(function)
    return function


def lines() -> list[str]:
    """Every registered module's lines, in registration order."""
    return [line for function in _reporters for line in function()]
