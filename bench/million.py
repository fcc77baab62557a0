"""`python -m bench.million`: a full resync of 1,000,000 admins, and of 10,000 back to back.

Each size is loaded in SQL (generate_series, no ORM: a million users, their accesses and
sync states in a few minutes), as after an earlier run: every user `user-<i>-1@bench.example`
administers `d<i mod 1000>`, which the stub answers at generation 0. The runs ask at
generation 1, so every user changes (+1 domain, -1 domain), as figure 4's run does. Order:
the small run, the large one, the small one again (the two small ones bracket the large one
and show how much the machine moved meanwhile), each with fresh workers (the Procfile's) and
an emptied private Redis, so their memory peaks compare. Before the large run, one batch of
its users is run in this process and every query it makes is EXPLAINed on the large tables.

While a run lasts, its progress (its SyncRun row, as the admin's run page reads it) is printed
every --progress-every seconds; --large-run-minutes cuts the large run short and reports the
part that ran. Prints the figures and copies them to bench/results/million.txt; asserts
nothing (the batch's plans are proved by tests/entitlements/test_batch_queries_at_scale.py).

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/messages_bench_<name> \\
        flock /work/wt/bench.lock .venv/bin/python -m bench.million
"""

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.services import (
    BenchSetupError,
    PrivateRedis,
    StubProcess,
    database_sessions,
    ensure_database,
    set_up_bench_process,
)
from bench.speed_probe import SpeedProbe

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/messages_bench_million"
LOG_DIR = Path(__file__).resolve().parent / "results"
RESYNC_LATENCY_S = 0.02
TUNING = {
    "ENTITLEMENTS_CACHE_TIMEOUT_SECONDS": "0",
    # Lifted: as the other figures', far above what a run reaches (it never waits), and still
    # in the path (its Redis script runs for every call).
    "ENTITLEMENTS_RATE_LIMIT_PER_SECOND": "1000",
    # Every user loses one access on purpose: the revocation budget would hold nine in ten.
    "ENTITLEMENTS_MAX_REVOKE_SHARE": "1",
    # A million users take longer than the default hour: its batches would expire unrun in
    # the queue (the batch expiry is one interval) and the run be closed as incomplete.
    "ENTITLEMENTS_RESYNC_INTERVAL_SECONDS": str(6 * 3600),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.million",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=1_000_000, help="users of the large run")
    parser.add_argument(
        "--baseline-users", type=int, default=10_000, help="users of the small runs around it"
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=60,
        help="seconds between two progress lines of the large run (the small runs: a tenth)",
    )
    parser.add_argument(
        "--large-run-minutes",
        type=float,
        default=None,
        help="cut the large run after this long and report the part that ran",
    )
    parser.add_argument(
        "--explain-users", type=int, default=100, help="users of the batch whose SQL is explained"
    )
    parser.add_argument(
        "--explain-only",
        action="store_true",
        help="load the large size, explain one batch's statements on it, run nothing",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database to use and empty; its name must contain 'bench' "
        "(env BENCH_DATABASE_URL)",
    )
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Interval:
    """The stretch of a run between two progress lines."""

    users_per_s: float
    machine_ms_per_user: float
    pace: float


# Intervals of the large run whose pace is within this share of a small run's compare with it.
PACE_MATCH = 0.075


def matched_at_pace(large: "SizedRun", small: "SizedRun") -> tuple[int, float, float]:
    """The large run against a small one at the same pace of the machine: how many of its
    intervals ran within PACE_MATCH of the small run's pace, and their mean users/s and
    machine CPU per user over the small run's (0 and 0.0 without such an interval).

    The machine's pace moves by up to 2x within a half-hour run, more than the 10 % looked
    for: the whole large run against a 20-second small one compares two moments of the
    machine, these intervals compare the sizes at one.
    """
    if not small.pace:
        return 0, 0.0, 0.0
    matched = [
        interval
        for interval in large.intervals
        if interval.pace and abs(interval.pace - small.pace) <= PACE_MATCH * small.pace
    ]
    if not matched:
        return 0, 0.0, 0.0
    rate = sum(interval.users_per_s for interval in matched) / len(matched)
    cost = sum(interval.machine_ms_per_user for interval in matched) / len(matched)
    return (
        len(matched),
        rate / small.run.users_per_s,
        cost / small.cpu_ms_per_user("machine"),
    )


@dataclass
class SizedRun:
    """One full run at one size: its load, its figures and its progress over time."""

    label: str
    users: int
    load_seconds: float = 0.0
    run: Any = None
    # Cut short by --large-run-minutes: its figures are those of the part that ran.
    cut_short: bool = False
    # (seconds since the run started, users counted): printed, and every half second.
    progress: list[tuple[float, int]] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_average_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # The run's window in unix time, and the machine's pace over it (bench/speed_probe.py:
    # CPU microseconds per unit of fixed work, the median of the samples taken meanwhile).
    window: tuple[float, float] = (0.0, 0.0)
    pace: float = 0.0
    # What each progress line's interval did, cost and ran at.
    intervals: list["Interval"] = field(default_factory=list)

    def cpu_ms_per_user(self, part: str) -> float:
        return 1000 * self.run.cpu_seconds[part] / self.run.users


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            redis_server = PrivateRedis(scratch)
            stack.callback(redis_server.stop)
            stub = StubProcess(log=LOG_DIR / "stub-million.log")
            stack.callback(stub.stop)
            ensure_database(args.database_url)
            worker_env = set_up_bench_process(
                database_url=args.database_url,
                redis_url=redis_server.url,
                stub=stub,
                scratch=scratch,
                extra=TUNING,
            )
            run_sizes(
                args=args,
                stub=stub,
                redis_server=redis_server,
                worker_env=worker_env,
                metrics_dir=scratch / "metrics",
                stack=stack,
            )
    except BenchSetupError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    return 0


def run_sizes(
    *, args, stub, redis_server, worker_env: dict, metrics_dir: Path, stack: ExitStack
) -> None:
    """Load and run each size in turn; print the figures as they come, then side by side."""
    from django.core.management import call_command

    from bench import million_data
    from bench.layout import shipped_workers
    from worker.queues import BULK_QUEUE

    call_command("migrate", verbosity=0)
    sizes = [
        SizedRun("small before", args.baseline_users),
        SizedRun("large", args.users),
        SizedRun("small after", args.baseline_users),
    ]
    large_run = sizes[1]
    if args.explain_only:
        sizes = [large_run]
    specs = shipped_workers(environ=worker_env)
    bulk = next(spec.name for spec in specs if BULK_QUEUE in spec.queues)
    growing = 0
    _say(f"bench.million at {_commit()}, load average {_load(os.getloadavg())}")
    probe = stack.enter_context(SpeedProbe(LOG_DIR / "million-pace.txt", every=1.0))
    for sized in sizes:
        large = sized is large_run
        _say(f"loading {sized.users:,} users ({sized.label})")
        sized.load_seconds = million_data.load(sized.users)
        _say(f"loaded {sized.users:,} users in {sized.load_seconds:.0f} s")
        if large:
            growing = _explain_batch(stub, users=sized.users, sample=args.explain_users)
            if args.explain_only:
                return
        redis_server.client.flushdb()
        clear_directory(metrics_dir)
        sized.load_average = os.getloadavg()
        sized.run = _timed_run(
            stub,
            redis_server,
            sized,
            specs=specs,
            worker_env=worker_env,
            every=args.progress_every if large else max(args.progress_every / 10, 1),
            cut_after=args.large_run_minutes * 60 if large and args.large_run_minutes else None,
            probe=probe,
        )
        sized.pace = probe.pace(*sized.window)
        sized.load_average_after = os.getloadavg()
        _print_run(sized, bulk=bulk)
    summary = _summary(sizes, bulk=bulk, growing=growing)
    _say(summary)
    (LOG_DIR / "million.txt").write_text(summary + "\n")


def _explain_batch(stub, *, users: int, sample: int) -> int:
    """EXPLAIN every statement of one batch, and the fan-out's query, on the loaded tables;
    print what grows with the tables; return how many statements of the batch do."""
    from bench import million_data
    from tests.support import query_plans

    # Generation 2: the sampled users change here, and change again in the run.
    stub.control(latency=0, generation=2)
    rows = query_plans.table_rows()
    statements = million_data.batch_queries(users=users, sample=sample)
    planned = [sql for sql in statements if query_plans.explainable(sql)]
    growing = {sql: million_data.plan_findings(sql, rows=rows) for sql in planned}
    growing = {sql: found for sql, found in growing.items() if found}
    _say(
        f"batch of {sample} users among {users:,}: {len(statements)} statements, "
        f"{len(planned)} planned, {len(growing)} with a plan growing with the tables"
    )
    for sql, found in growing.items():
        _say(f"  {', '.join(found)}: {sql[:300]}")
    fan_out = million_data.fan_out_query()
    fan_out_findings = million_data.plan_findings(fan_out, rows=rows)
    _say(
        "the fan-out's query (one per run, streamed): "
        + (", ".join(fan_out_findings) or "no node of 10,000 rows or more")
    )
    return len(growing)


def _timed_run(
    stub,
    redis_server,
    sized: SizedRun,
    *,
    specs,
    worker_env: dict,
    every: float,
    cut_after,
    probe: SpeedProbe,
):
    """One full run at 20 ms with fresh workers, charged their CPU and PostgreSQL's.

    Timed as figure 4's (bench/resync.py): from the run's start to the last state it wrote;
    a run cut short, from its start to the cut, over the users counted by then.
    """
    from django.conf import settings
    from django.db.models import Max

    from bench.probe import FANOUT_RSS_KEY, FANOUT_TASK
    from bench.resync import RssSampler, RunFigures, cpu_snapshot, cpu_used
    from bench.scenarios import running_workers
    from core.models import EntitlementSyncState, SyncRun
    from messages.celery_app import app

    database = settings.DATABASES["default"]["NAME"]
    with running_workers(specs, env=worker_env, log_dir=LOG_DIR) as workers:
        stub.control(latency=RESYNC_LATENCY_S, generation=1)
        watched = {
            "workers": lambda: [process for worker in workers for process in worker.tree()],
            "postgres": lambda: database_sessions(database),
        }
        cpu_before = {name: cpu_snapshot(processes()) for name, processes in watched.items()}
        machine_before = machine_cpu_seconds()

        def spent() -> tuple[float, float]:
            """CPU seconds of the workers and of the whole machine since the run began."""
            workers_now = cpu_snapshot(watched["workers"]())
            return (
                cpu_used(cpu_before["workers"], workers_now),
                machine_cpu_seconds() - machine_before,
            )

        with RssSampler(workers) as sampler:
            started = time.time()
            task_id = app.send_task(FANOUT_TASK, kwargs={"trigger": "periodic"}).id
            run = _wait_for(lambda: SyncRun.objects.filter(task_id=task_id).first(), 120)
            cut = _follow(run, sized, every=every, cut_after=cut_after, spent=spent, probe=probe)
            sized.window = (started, time.time())
        cpu = {
            name: cpu_used(cpu_before[name], cpu_snapshot(processes()))
            for name, processes in watched.items()
        }
        cpu["machine"] = machine_cpu_seconds() - machine_before
        fanout_rss = _wait_for(lambda: redis_server.client.hget(FANOUT_RSS_KEY, task_id), 120)
    if cut is not None:
        # The counts at the cut: the workers finished their batches in flight since.
        sized.cut_short = True
        seconds, run = cut
        users = run.users_done + run.users_failed + run.users_skipped
    else:
        run.refresh_from_db()
        if run.status != SyncRun.Status.DONE:
            raise RuntimeError(f"the full resync ended {run.status} ({run.error_code})")
        last_row = EntitlementSyncState.objects.filter(
            last_trigger="periodic", finished_at__gte=run.started_at
        ).aggregate(last=Max("finished_at"))["last"]
        seconds, users = (last_row - run.started_at).total_seconds(), run.users_enqueued
    return RunFigures(
        users=users,
        seconds=seconds,
        done=run.users_done,
        changed=run.users_changed,
        failed=run.users_failed,
        skipped=run.users_skipped,
        worker_peak_rss=dict(sampler.peaks),
        fanout_peak_rss=int(fanout_rss),
        cpu_seconds=cpu,
    )


def _follow(
    run,
    sized: SizedRun,
    *,
    every: float,
    cut_after: float | None,
    spent: Callable[[], tuple[float, float]],
    probe: SpeedProbe,
):
    """Print the run's progress every `every` seconds until it ends (None), or until
    `cut_after` seconds: then (seconds, the run's row) at the cut.

    Each line also says what the last interval did and cost: its users/s, the workers' and
    the whole machine's CPU per user (`spent`), and the machine's pace meanwhile (`probe`),
    so that a rate that moves can be told from a machine that does.
    """
    from django.utils import timezone

    from core.models import SyncRun

    next_line = every
    last = (0.0, 0, 0.0, 0.0, time.time())
    while True:
        run.refresh_from_db()
        elapsed = (timezone.now() - run.started_at).total_seconds()
        counted = run.users_done + run.users_failed + run.users_skipped
        sized.samples.append((elapsed, counted))
        if run.status != SyncRun.Status.RUNNING:
            sized.progress.append((elapsed, counted))
            return None
        if elapsed >= next_line:
            sized.progress.append((elapsed, counted))
            enqueued = f"{run.users_enqueued:,} enqueued" if run.users_enqueued else "fan-out"
            workers_cpu, machine_cpu = spent()
            now = time.time()
            users = max(counted - last[1], 1)
            interval = Interval(
                users_per_s=(counted - last[1]) / (elapsed - last[0]),
                machine_ms_per_user=1000 * (machine_cpu - last[3]) / users,
                pace=probe.pace(last[4], now),
            )
            sized.intervals.append(interval)
            _say(
                f"progress {sized.label}: {elapsed:6.0f} s, {counted:>9,} of {sized.users:,} "
                f"users counted ({counted / elapsed:.0f} users/s so far; {enqueued}), "
                f"load average {_load(os.getloadavg())}; since the last line: "
                f"{interval.users_per_s:.0f} users/s, CPU per user workers "
                f"{1000 * (workers_cpu - last[2]) / users:.2f} ms, machine "
                f"{interval.machine_ms_per_user:.2f} ms, pace {interval.pace:.0f} us"
            )
            last = (elapsed, counted, workers_cpu, machine_cpu, now)
            while next_line <= elapsed:
                next_line += every
        if cut_after is not None and elapsed >= cut_after:
            sized.progress.append((elapsed, counted))
            _say(f"{sized.label} run cut short after {elapsed:.0f} s: {counted:,} users counted")
            return elapsed, copy.copy(run)
        time.sleep(0.5)


def steady_rate(sized: SizedRun) -> float:
    """Users/s between the samples at 10 % and 90 % of the users: the run without its start
    (workers warming up, the fan-out's first batches) and its tail (the last batches)."""
    samples = sized.samples
    low = next((s for s in samples if s[1] >= 0.1 * sized.users), None)
    high = next((s for s in reversed(samples) if s[1] <= 0.9 * sized.users), None)
    if low is None or high is None or high[0] <= low[0]:
        return 0.0
    return (high[1] - low[1]) / (high[0] - low[0])


def machine_cpu_seconds() -> float:
    """CPU seconds every process of the machine used so far (idle, I/O wait and steal aside):
    what the workers, PostgreSQL, Redis, the stub and the system cost together, including
    the processes that ended meanwhile (recycled database sessions, autovacuum)."""
    import psutil

    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq


def _wait_for(fetch, seconds: float):
    deadline = time.monotonic() + seconds
    while not (value := fetch()):
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the benchmark's run")
        time.sleep(0.1)
    return value


def _print_run(sized: SizedRun, *, bulk: str) -> None:
    from bench.resync import MB

    run = sized.run
    _say(
        f"run {sized.label}{' (cut short)' if sized.cut_short else ''}: {run.users:,} users in "
        f"{run.seconds:.1f} s = {run.users_per_s:.1f} users/s; changed {run.changed:,}, "
        f"failed {run.failed}, skipped {run.skipped}; bulk worker peak RSS "
        f"{run.worker_peak_rss[bulk] / MB:.0f} MB, fan-out peak RSS "
        f"{run.fanout_peak_rss / MB:.0f} MB; CPU per user: workers "
        f"{1000 * run.cpu_seconds['workers'] / run.users:.2f} ms, PostgreSQL "
        f"{1000 * run.cpu_seconds['postgres'] / run.users:.2f} ms, the whole machine "
        f"{sized.cpu_ms_per_user('machine'):.2f} ms; the machine's pace {sized.pace:.0f} us "
        f"per probe unit; load average "
        f"{_load(sized.load_average)} at start, {_load(sized.load_average_after)} at end"
    )


def _summary(sizes: list[SizedRun], *, bulk: str, growing: int) -> str:
    """The figures side by side, the large run over each small one, its progress."""
    from bench.resync import MB

    small_before, large, small_after = sizes
    lines = [f"{'':30}" + "".join(f"{sized.label:>14}" for sized in sizes)]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"{name:30}" + "".join(f"{value:>14}" for value in values))

    row("users", [f"{sized.users:,}" for sized in sizes])
    row("load (s)", [f"{sized.load_seconds:.0f}" for sized in sizes])
    row("users timed", [f"{sized.run.users:,}" for sized in sizes])
    row("run (s)", [f"{sized.run.seconds:.0f}" for sized in sizes])
    row("users/s", [f"{sized.run.users_per_s:.1f}" for sized in sizes])
    row("users/s from 10 % to 90 %", [f"{steady_rate(sized):.1f}" for sized in sizes])
    row("bulk worker peak RSS (MB)", [f"{s.run.worker_peak_rss[bulk] / MB:.0f}" for s in sizes])
    row("fan-out peak RSS (MB)", [f"{s.run.fanout_peak_rss / MB:.0f}" for s in sizes])
    for part in ("workers", "postgres", "machine"):
        row(f"{part} CPU (ms/user)", [f"{s.cpu_ms_per_user(part):.2f}" for s in sizes])
    # Not divided by: the CPU a user costs moves less than the probe's (system calls and waits
    # do not speed up as Python does). Compared at equal pace instead (matched_at_pace).
    row("pace (us per probe unit)", [f"{s.pace:.0f}" for s in sizes])
    row("load average at start", [f"{s.load_average[0]:.1f}" for s in sizes])
    row("load average at end", [f"{s.load_average_after[0]:.1f}" for s in sizes])
    if large.cut_short:
        lines.append("the large run was cut short: its figures are those of the part that ran")
    for small in (small_before, small_after):
        speed = large.run.users_per_s / small.run.users_per_s
        steady = steady_rate(large) / (steady_rate(small) or 1)
        worker = large.run.worker_peak_rss[bulk] / small.run.worker_peak_rss[bulk]
        fanout = large.run.fanout_peak_rss / small.run.fanout_peak_rss
        count, matched_rate, matched_cost = matched_at_pace(large, small)
        lines.append(
            f"large over {small.label} at its pace (+-{PACE_MATCH:.1%}): {count} intervals "
            f"of the large run, users/s {matched_rate:.3f}, machine CPU per user "
            f"{matched_cost:.3f}"
            if count
            else f"large over {small.label} at its pace (+-{PACE_MATCH:.1%}): no interval "
            "of the large run ran at it"
        )
        lines.append(
            f"large over {small.label}: users/s {speed:.3f} (10 % to 90 %: {steady:.3f}), "
            f"bulk worker RSS {worker:.3f}, fan-out RSS {fanout:.3f}"
        )
    lines.append(f"statements of a batch whose plan grows with the tables: {growing}")
    series = ", ".join(f"{elapsed / 60:.1f} min {counted:,}" for elapsed, counted in large.progress)
    lines.append(f"progress of the large run (users counted): {series}")
    return "\n".join(lines)


def _say(line: str) -> None:
    print(line, flush=True)


def _load(average: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in average)


def _commit() -> str:
    return subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=LOG_DIR.parent.parent,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def clear_directory(path: Path) -> None:
    """Empty the Prometheus files between runs (each run's workers start afresh)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


if __name__ == "__main__":
    sys.exit(main())
