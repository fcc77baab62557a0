"""A benchmark's own database for a test that runs `python -m bench...`, beside the suite's
test database and named after it (so after the pytest-xdist worker too): the benchmark empties
its tables, and the database is dropped afterwards, so nothing stays on the shared server."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tests.support.names import own_name


@contextmanager
def bench_database(purpose: str) -> Iterator[str]:
    """The URL of a database named `<test database>[_gwN]_<purpose>` (purpose contains
    "bench": the benchmark refuses other names), dropped on the way out."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    url = urlunsplit(parts._replace(path=f"/{own_name(purpose)}"))
    try:
        yield url
    finally:
        admin_url = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(own_name(purpose))
                )
            )


REPO = Path(__file__).resolve().parent.parent.parent


def run_bench(module: str, *arguments: str, database_url: str) -> subprocess.CompletedProcess:
    """`python -m <module> <arguments>` on `database_url`, as an operator runs it; its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPO,
        env={**os.environ, "BENCH_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
