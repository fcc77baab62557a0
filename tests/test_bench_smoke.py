"""The benchmark works: `python -m bench --smoke` runs every part against PostgreSQL, Redis,
worker subprocesses and the stub, and prints each figure of issue 6 as `name=value`.

Only that it works: a benchmark is not a timed test, no speed is asserted here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bench_database import bench_database

# Saturates the CPU or measures a rate or a delay: `make test` runs it apart, alone (conftest.py).
pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parent.parent

FIGURES = (
    "login_overhead_p50_ms_async_25",
    "login_overhead_p99_ms_async_25",
    "login_overhead_p99_ms_async_2000",
    "login_overhead_p99_ms_inline_25",
    "login_overhead_p99_ms_inline_2000",
    "login_to_rights_p99_ms_idle",
    "login_to_rights_p99_ms_fullrun",
    "queries_per_sync_1",
    "queries_per_sync_50",
    "queries_per_sync_500",
    "noop_tasks_per_s",
    "full_resync_users",
    "full_resync_seconds",
    "full_resync_users_per_s",
    "full_resync_ratio_to_noop",
    "unchanged_run_access_writes",
    "unchanged_run_cost_ratio",
    "peak_rss_mb_worker",
    "peak_rss_mb_fanout",
    "storm_logins",
    "storm_queued_syncs",
    "metrics_sync_ms_on",
    "metrics_sync_ms_off",
    "metrics_overhead_percent",
    "metrics_calls_us_per_sync",
    "bad_input_largest_list_under_cap_ms",
    "bad_input_10mb_declared_ms",
    "signal_to_rights_p99_ms_idle",
    "signal_organisation_all_asked_s",
    "signal_storm_upstream_calls_per_user",
    "signal_storm_login_to_rights_p99_ms_during",
    "pacing_run_seconds",
    "pacing_calls_per_s_steady_p50",
    "pacing_busiest_1s_window_first_10s",
    "pacing_login_to_rights_p99_ms_during",
    "signal_endpoint_2w1t_100_per_s_ms_p99",
    "signal_endpoint_2w1t_100_per_s_cpu_ms_per_signal_web",
)
LINE = re.compile(r"^([a-z0-9_]+)=(-?\d+(?:\.\d+)?)$")


@pytest.fixture
def bench_database_url():
    with bench_database("bench_smoke") as url:
        yield url


@pytest.mark.broker
def test_smoke_mode_prints_every_figure_with_a_number(bench_database_url):
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=REPO,
        env={**os.environ, "BENCH_DATABASE_URL": bench_database_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = dict(
        match.groups() for line in completed.stdout.splitlines() if (match := LINE.match(line))
    )
    missing = [name for name in FIGURES if name not in printed]
    assert not missing, f"not printed as name=number: {missing}\n{completed.stdout}"
    assert int(printed["storm_logins"]) == 1000
    assert int(printed["queries_per_sync_1"]) == int(printed["queries_per_sync_500"])
