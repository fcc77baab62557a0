"""Benchmarks of the entitlements sync against real PostgreSQL, Redis, workers and the stub.

Run with `python -m bench --smoke | --quick | --full` (docs/performance.md).
"""

from bench.cli import main

__all__ = ("main",)
