"""`python -m bench.table_size` (figure 17), as an operator runs it, on a few hundred users:
two processes on two databases run the batch path in turns and the table compares them."""

import re
import subprocess
from contextlib import ExitStack

import pytest

from bench.table_size import ratio
from tests.support.bench_database import bench_database, run_bench


def _run(*arguments: str) -> subprocess.CompletedProcess:
    with ExitStack() as stack:
        url = stack.enter_context(bench_database("bench_tsize"))
        for side in ("small", "large", "before", "after"):
            # The benchmark's own two databases, named after the one it is given.
            stack.enter_context(bench_database(f"bench_tsize_{side}"))
        return run_bench("bench.table_size", *arguments, database_url=url)


@pytest.mark.long
def test_two_sizes_in_turns():
    completed = _run("--small", "300", "--large", "600", "--rounds", "2", "--round-users", "100")

    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert "small: 300 users loaded" in out and "large: 600 users loaded" in out
    # small large large small: each size's rounds alternate with the other's.
    assert re.findall(r"round \d+, (\w+):", out) == ["small", "large", "large", "small"]
    row = re.search(r"PostgreSQL CPU ms/user\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out)
    assert row is not None and float(row[1]) > 0 and float(row[2]) > 0
    assert "2 rounds of 100 users each, order small large large small" in out


# Today's code runs on the "before" side: 0012's table (the batches' counts) is the oldest
# schema it runs on, and migrating back to it is what an operator comparing a later
# index-only migration does.
@pytest.mark.long
def test_a_migration_against_the_one_before_at_one_size():
    completed = _run(
        "--large", "300", "--rounds", "1", "--round-users", "100", "--before-migration", "core:0012"
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert re.findall(r"round \d+, (\w+):", completed.stdout) == ["before", "after"]
    assert "'before' migrated back to core:0012" in completed.stdout


def test_rounds_that_the_small_tables_cannot_hold_are_refused():
    completed = _run("--small", "100", "--rounds", "2", "--round-users", "100")

    assert completed.returncode == 2
    assert "(200) is more users than the tables hold (100)" in completed.stderr


def test_counts_that_are_not_positive_are_refused():
    completed = _run("--round-users", "0")

    assert completed.returncode == 2
    assert "argument --round-users: 0 is not a positive whole number" in completed.stderr


def test_a_ratio_over_a_part_that_measured_nothing_prints_a_dash():
    """A small round's Redis CPU can be 0 (under the clock's tick): the report once died
    dividing by it (ZeroDivisionError in CI)."""
    assert ratio(0.2, 0.0) == "-"
    assert ratio(0.3, 0.2) == "1.500"
