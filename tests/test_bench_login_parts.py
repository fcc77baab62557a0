"""`python -m bench.login_parts` (figures 14, 15l, 15m), as an operator runs it, on a few
logins: what each part of a login costs, and its refusals of options that do not go together."""

import os
import re
import subprocess
from functools import partial
from types import SimpleNamespace

import pytest

from tests.support.bench_database import bench_database, run_bench


@pytest.mark.parametrize(
    ("alternate", "redis_round_trips"),
    [("prepare", ("2.0", "2.0")), ("no-sent-event", ("2.0", "1.0"))],
)
@pytest.mark.long
def test_logins_taking_turns_report_both_sides(alternate, redis_round_trips):
    with bench_database("bench_login_parts") as url:
        completed = run_bench(
            "bench.login_parts",
            "--logins",
            "20",
            "--every",
            "0",
            "--alternate",
            alternate,
            database_url=url,
        )

    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = dict(re.findall(r"^(login_parts_\w+)=(.*)$", completed.stdout, re.MULTILINE))
    assert figures["login_parts_alternate"] == alternate
    for side, round_trips in zip(("before", "after"), redis_round_trips, strict=True):
        # Each login: one SQL statement, the task (and its task-sent event, unless the side
        # leaves it out) on Redis, no client built.
        assert figures[f"login_parts_{side}_sql_statements_per_login"] == "1.0"
        assert figures[f"login_parts_{side}_redis_round_trips_per_login"] == round_trips
        assert figures[f"login_parts_{side}_redis_clients_built_per_login"] == "0.0"
        assert float(figures[f"login_parts_{side}_total_ms_p50"]) > 0


def test_deeper_nice_goes_with_alternate_nice_only():
    completed = run_bench(
        "bench.login_parts", "--deeper-nice", "5", database_url="postgres://unused/bench"
    )

    assert completed.returncode == 2
    assert "--deeper-nice goes with --alternate nice" in completed.stderr


def test_deeper_nice_is_a_niceness_step():
    completed = run_bench(
        "bench.login_parts",
        "--under-load",
        "--alternate",
        "nice",
        "--deeper-nice",
        "25",
        database_url="postgres://unused/bench",
    )

    assert completed.returncode == 2
    assert "--deeper-nice is a niceness step from 0 to 19" in completed.stderr


@pytest.fixture
def sleeping_workers(monkeypatch):
    """Three real processes standing for the Procfile's workers, each started at its niceness
    (5, 10, 5), handed to bench.login_parts as `--under-load` hands it the running workers."""
    import psutil

    from bench import login_parts

    shipped = (5, 10, 5)
    # The niceness is set in the child before it runs `sleep`, and Popen returns once it has:
    # no window in which the process is still at the test's niceness.
    children = [
        subprocess.Popen(
            ["sleep", "60"], preexec_fn=partial(os.setpriority, os.PRIO_PROCESS, 0, niceness)
        )
        for niceness in shipped
    ]
    processes = [psutil.Process(child.pid) for child in children]
    assert [process.nice() for process in processes] == list(shipped)
    workers = [
        SimpleNamespace(spec=SimpleNamespace(niceness=niceness), tree=[process].copy)
        for niceness, process in zip(shipped, processes, strict=True)
    ]
    monkeypatch.setattr(login_parts, "_workers", workers)
    # `_renice` lists the processes once per run: this test's, not an earlier one's.
    vars(login_parts._renice).pop("processes", None)
    yield processes
    vars(login_parts._renice).pop("processes", None)
    for child in children:
        child.kill()
        child.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="lowering a niceness back needs CAP_SYS_NICE")
@pytest.mark.parametrize(
    ("deeper", "before", "after"),
    [(0, [0, 10, 0], [5, 10, 5]), (5, [5, 10, 5], [10, 15, 10]), (12, [5, 10, 5], [17, 19, 17])],
    ids=["figure 15m", "deeper by 5", "capped at 19"],
)
def test_alternate_nice_renices_the_workers_login_by_login(
    sleeping_workers, monkeypatch, deeper, before, after
):
    from bench import login_parts

    monkeypatch.setattr(login_parts, "_deeper_nice", deeper)

    login_parts._renice(changes=True)
    assert [process.nice() for process in sleeping_workers] == after
    login_parts._renice(changes=False)
    assert [process.nice() for process in sleeping_workers] == before
    login_parts._renice(changes=True)
    assert [process.nice() for process in sleeping_workers] == after
