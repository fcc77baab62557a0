"""The benchmark's sequence: each figure measured against the real parts, in a fixed order."""

import os
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
from django.conf import settings
from django.core.management import call_command

from bench import data
from bench.bad_input import bad_input_times
from bench.logins import async_login, inline_login, login_to_rights, storm, timed_logins
from bench.metrics_cost import metrics_cost
from bench.modes import PARTS, Mode
from bench.pacing import LOGIN_PAUSE_SECONDS, PACED_RATE_PER_SECOND, curve, pacing_figures
from bench.queries import queries_per_sync
from bench.report import Figures, machine_description
from bench.resync import MB, RunFigures, full_resync, noop_throughput
from bench.services import (
    BenchSetupError,
    PrivateRedis,
    StubProcess,
    WebProcess,
    WorkerProcess,
    WorkerSpec,
    database_sessions,
    start_worker,
    wait_for_workers,
)
from bench.signals import (
    Signals,
    by_signal,
    change_to_rights,
    logins_during,
    offered_load,
    organisation_fan_out,
    settle_and_recheck_seconds,
    synced_probes,
)
from bench.signals import storm as signal_storm
from core.models import EntitlementSyncState, User
from messages.celery_app import app
from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE, SIGNALS_QUEUE

# The upstream latencies: logins at 25 ms and 2 s, full runs at 20 ms.
LOGIN_LATENCIES_MS = (25, 2000)
RESYNC_LATENCY_MS = 20
OK = EntitlementSyncState.Status.OK
# Pace of the timed async logins: a busy morning's peak, several times over. Unpaced, the
# bench would time how one process's logins queue behind the syncs they start (figure 7 is
# the storm).
ASYNC_LOGINS_PER_S = 50
# Untimed logins before each timed series: connections open, code paths warm.
WARMUP_LOGINS = 20


@contextmanager
def running_workers(specs: list[WorkerSpec], *, env: dict, log_dir: Path):
    """Start the worker processes, wait until they all answer, stop them on the way out."""
    workers: list[WorkerProcess] = []
    try:
        for spec in specs:
            workers.append(start_worker(spec=spec, env=env, log_dir=log_dir))
        wait_for_workers(app, workers)
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def wait_until_idle(redis_server: PrivateRedis, workers: list[WorkerProcess], *, timeout=120):
    """Wait until no task is queued, reserved or running on the benchmark's workers."""
    destination = [worker.hostname for worker in workers]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = sum(
            redis_server.client.llen(queue)
            for queue in (INTERACTIVE_QUEUE, BULK_QUEUE, SIGNALS_QUEUE)
        )
        inspect = app.control.inspect(destination=destination, timeout=1.0)
        busy = [
            task
            for answer in (inspect.active() or {}, inspect.reserved() or {})
            for tasks in answer.values()
            for task in tasks
        ]
        if not queued and not busy:
            return
        time.sleep(0.2)
    raise BenchSetupError("the workers did not become idle")


def purge_interactive(redis_server: PrivateRedis, workers: list[WorkerProcess]) -> None:
    """Drop the login syncs still queued (their logins are measured already), wait for the rest."""
    redis_server.client.delete(INTERACTIVE_QUEUE)
    wait_until_idle(redis_server, workers)


def run_all(
    *,
    mode: Mode,
    figures: Figures,
    stub: StubProcess,
    redis_server: PrivateRedis,
    worker_env: dict,
    log_dir: Path,
    layouts: dict[str, list[WorkerSpec]],
    tuning: dict[str, str],
    parts: frozenset[str] = PARTS,
) -> None:
    """Every figure of the issue, in order; each line is printed as soon as it is measured.

    `parts` picks some of PARTS only, to iterate on one of them.
    """
    call_command("migrate", verbosity=0)
    data.empty_tables()
    redis_server.client.flushdb()
    data.create_domains()
    figures.context.update(machine_description())
    figures.context["settings"] = {
        **tuning,
        "layouts": {
            name: [
                f"{spec.name}: -Q {','.join(spec.queues)} -c {spec.concurrency}" for spec in specs
            ]
            for name, specs in layouts.items()
        },
    }

    if "queries" in parts:
        # Figure 3, in this process: no worker needed.
        stub.control(latency=0, generation=0)
        figures.add_all(queries_per_sync())
        data.delete_users(kind="queries")
    if "metrics" in parts:
        # Figure 8, in this process too.
        stub.control(latency=0, generation=0)
        figures.add_all(metrics_cost(syncs=mode.metrics_syncs))
    if "bad_input" in parts:
        # Figure 9, in this process, against a stub of its own.
        figures.add_all(bad_input_times(repeat=mode.bad_input_repeat))

    with running_workers(layouts["split"], env=worker_env, log_dir=log_dir) as workers:
        figures.add("noop_tasks_per_s", noop_throughput(app, tasks=mode.noop_tasks))
        if "logins" in parts:
            for latency in LOGIN_LATENCIES_MS:
                stub.control(latency=latency / 1000)
                _login_overheads(mode, figures, latency, redis_server, workers)
                if latency == LOGIN_LATENCIES_MS[0]:
                    _rights_when_idle(mode, figures)
                    _storm(mode, figures, redis_server, workers)
            purge_interactive(redis_server, workers)
            for kind in ("async25", "inline25", "async2000", "inline2000", "rights", "storm"):
                data.delete_users(kind=kind)
        if "resync" in parts:
            stub.control(latency=RESYNC_LATENCY_MS / 1000)
            _full_runs(mode, figures, stub, redis_server, workers)
        if "signals" in parts:
            stub.control(latency=RESYNC_LATENCY_MS / 1000, generation=0)
            web = WebProcess(env=worker_env, log=log_dir / "web.log")
            try:
                _signals(
                    mode,
                    figures,
                    stub,
                    redis_server,
                    workers,
                    Signals(web.url),
                    web_env=worker_env,
                    log_dir=log_dir,
                )
            finally:
                web.stop()

    if "pacing" in parts:
        # Figure 13: the workers as shipped, at the shipped rate limit.
        stub.control(latency=RESYNC_LATENCY_MS / 1000, generation=0)
        paced_env = {**worker_env, "ENTITLEMENTS_RATE_LIMIT_PER_SECOND": str(PACED_RATE_PER_SECOND)}
        with running_workers(layouts["split"], env=paced_env, log_dir=log_dir) as workers:
            _pacing(mode, figures, stub, redis_server, workers)

    if "shared" not in parts:
        return
    stub.control(latency=RESYNC_LATENCY_MS / 1000)
    with running_workers(layouts["shared"], env=worker_env, log_dir=log_dir) as workers:
        stub.control(generation=2)
        probes = data.create_users(kind="probeshared", indexes=range(mode.rights_probes), status=OK)
        latencies: list[float] = []
        run = _run(
            workers,
            stub,
            redis_server,
            during=lambda running: latencies.extend(
                login_to_rights(probes, keep_going=running, pause=0.1)
            ),
        )
        figures.add_percentiles("login_to_rights", "ms_fullrun_shared", latencies)
        figures.add("full_resync_users_per_s_shared", run.users_per_s)
        figures.add_run("shared", run, bulk=workers[0].spec.name)


def _login_overheads(mode, figures, latency, redis_server, workers) -> None:
    """Figure 1 at one upstream latency: the real async step, then the inline design."""
    users = data.create_users(kind=f"async{latency}", indexes=range(mode.logins + WARMUP_LOGINS))
    timings = timed_logins(users, async_login, warmup=WARMUP_LOGINS, every=1 / ASYNC_LOGINS_PER_S)
    figures.add_percentiles("login_overhead", f"ms_async_{latency}", timings)
    purge_interactive(redis_server, workers)
    slow = latency >= 1000
    count = mode.inline_slow_logins if slow else mode.logins
    # At 2 s a login, one untimed login warms up enough.
    warmup = 1 if slow else WARMUP_LOGINS
    users = data.create_users(kind=f"inline{latency}", indexes=range(count + warmup))
    timings = timed_logins(
        users, inline_login, threads=mode.inline_threads if slow else 1, warmup=warmup
    )
    figures.add_percentiles("login_overhead", f"ms_inline_{latency}", timings)
    figures.add(f"login_overhead_inline_{latency}_logins", count)


def _rights_when_idle(mode, figures) -> None:
    """Figure 2 with an idle queue."""
    users = data.create_users(kind="rights", indexes=range(mode.rights_probes), status=OK)
    figures.add_percentiles("login_to_rights", "ms_idle", login_to_rights(users, pause=0.02))


def _storm(mode, figures, redis_server, workers) -> None:
    """Figure 7: the interactive queue is held while the storm runs, so its length counts the
    syncs the storm queued; consumption resumes afterwards."""
    users = data.create_users(kind="storm", indexes=range(mode.storm_users))
    destination = [worker.hostname for worker in workers if INTERACTIVE_QUEUE in worker.spec.queues]
    app.control.cancel_consumer(INTERACTIVE_QUEUE, destination=destination, reply=True)
    try:
        timings, sent, seconds = storm(users, logins=mode.storm_logins)
        queued = redis_server.client.llen(INTERACTIVE_QUEUE)
    finally:
        app.control.add_consumer(INTERACTIVE_QUEUE, destination=destination, reply=True)
    figures.add("storm_logins", len(timings))
    figures.add("storm_users", len(users))
    figures.add("storm_seconds", seconds)
    figures.add("storm_queued_syncs", queued)
    figures.add("storm_tasks_sent", sent)
    figures.add_percentiles("storm_login_overhead", "ms", timings)
    wait_until_idle(redis_server, workers)


def _run(workers, stub, redis_server, during=None) -> RunFigures:
    """One full resync with CPU accounting of every part of the benchmark."""
    database = settings.DATABASES["default"]["NAME"]
    watched = {
        "workers": lambda: [process for worker in workers for process in worker.tree()],
        "stub": lambda: [psutil.Process(stub.process.pid)],
        "redis": lambda: [psutil.Process(redis_server.process.pid)],
        # The backends serving the benchmark's database (their title names it).
        "postgres": lambda: database_sessions(database),
        "bench": lambda: [psutil.Process()],
    }
    return full_resync(
        app, workers=workers, cpu_watch=watched, redis_client=redis_server.client, during=during
    )


def _full_runs(mode, figures, stub, redis_server, workers) -> None:
    """Figures 4, 5, 6 and 2 during a full run."""
    bulk = next(worker for worker in workers if BULK_QUEUE in worker.spec.queues)
    data.create_users(kind="user", indexes=range(mode.small_users))
    data.analyze()
    small = _run(workers, stub, redis_server)
    figures.add_run("small", small, bulk=bulk.spec.name)

    data.create_users(kind="user", indexes=range(mode.small_users, mode.users))
    probes = data.create_users(kind="probe", indexes=range(mode.rights_probes), status=OK)
    data.analyze()
    latencies: list[float] = []
    first = _run(
        workers,
        stub,
        redis_server,
        during=lambda running: latencies.extend(
            login_to_rights(probes, keep_going=running, pause=0.1)
        ),
    )
    figures.add_percentiles("login_to_rights", "ms_fullrun", latencies)
    figures.add("login_to_rights_fullrun_samples", len(latencies))
    data.delete_users(kind="probe")

    before = data.settled_access_row_writes(settle_seconds=mode.stats_settle_seconds)
    unchanged = _run(workers, stub, redis_server)
    writes = data.settled_access_row_writes(settle_seconds=mode.stats_settle_seconds) - before
    stub.control(generation=1)
    changed = _run(workers, stub, redis_server)
    noop = figures.values["noop_tasks_per_s"]
    figures.add("full_resync_users", changed.users)
    figures.add("full_resync_seconds", changed.seconds)
    figures.add("full_resync_users_per_s", changed.users_per_s)
    figures.add("full_resync_ratio_to_noop", changed.users_per_s / noop)
    figures.add("full_resync_changed_users", changed.changed)
    figures.add("full_resync_failed_users", changed.failed + changed.skipped)
    figures.add("unchanged_run_access_writes", writes)
    figures.add("unchanged_run_seconds", unchanged.seconds)
    figures.add("unchanged_run_changed_users", unchanged.changed)
    figures.add("unchanged_run_cost_ratio", unchanged.seconds / changed.seconds)
    large_runs = (first, unchanged, changed)
    worker_peak = max(run.worker_peak_rss[bulk.spec.name] for run in large_runs)
    fanout_peak = max(run.fanout_peak_rss for run in large_runs)
    figures.add("peak_rss_mb_worker", worker_peak / MB)
    figures.add("peak_rss_mb_fanout", fanout_peak / MB)
    figures.add(f"peak_rss_mb_worker_{small.users}", small.worker_peak_rss[bulk.spec.name] / MB)
    figures.add(f"peak_rss_mb_fanout_{small.users}", small.fanout_peak_rss / MB)
    figures.add("peak_rss_ratio_worker", worker_peak / small.worker_peak_rss[bulk.spec.name])
    figures.add("peak_rss_ratio_fanout", fanout_peak / small.fanout_peak_rss)
    figures.add_run("changed", changed, bulk=bulk.spec.name)
    figures.add_run("unchanged", unchanged, bulk=bulk.spec.name)


def _endpoint_load(
    mode, figures, redis_server, workers, users: list[User], *, web_env: dict, log_dir: Path
) -> None:
    """The endpoint's latency at open-loop offered rates, and its CPU per signal by part, with
    each gunicorn layout of `mode.signal_endpoint_webs` (the first is the Procfile's)."""
    database = settings.DATABASES["default"]["NAME"]
    emails = [user.email for user in users]
    for web_workers, threads in mode.signal_endpoint_webs:
        web = WebProcess(
            env=web_env,
            log=log_dir / f"web-{web_workers}x{threads}.log",
            workers=web_workers,
            threads=threads,
        )
        watched = {
            "web": web.tree,
            "postgres": lambda: database_sessions(database),
            "redis": lambda: [psutil.Process(redis_server.process.pid)],
        }
        try:
            for rate in mode.signal_endpoint_rates:
                load = offered_load(
                    url=web.url,
                    emails=emails,
                    rate=rate,
                    seconds=mode.signal_endpoint_seconds,
                    cpu_watch=watched,
                )
                prefix = f"signal_endpoint_{web_workers}w{threads}t_{int(rate)}_per_s"
                for name in (
                    "answered_202_per_s",
                    "ms_p50",
                    "ms_p99",
                    "ms_max",
                    "sender_cpu_s",
                    "cpu_ms_per_signal_web",
                    "cpu_ms_per_signal_postgres",
                    "cpu_ms_per_signal_redis",
                ):
                    figures.add(f"{prefix}_{name}", load[name])
                figures.add(f"{prefix}_not_202", load["signals"] - load["statuses"].get("202", 0))
                wait_until_idle(redis_server, workers)
        finally:
            web.stop()


def _pacing(mode, figures, stub, redis_server, workers) -> None:
    """Figure 13: a full run of `mode.users` at the default rate limit, calls per second as the
    stub saw them, while people log in (their login syncs are upstream calls too)."""
    present = User.objects.filter(sub__startswith="user-").count()
    data.create_users(kind="user", indexes=range(present, mode.users))
    # Enough for a login every LOGIN_PAUSE_SECONDS over the run (users / rate seconds).
    logins = int(mode.users / PACED_RATE_PER_SECOND / LOGIN_PAUSE_SECONDS) + 10
    probes = data.create_users(kind="pacing", indexes=range(logins), status=OK)
    data.analyze()
    # An idle spell first, as before any periodic run: a token bucket is full again.
    time.sleep(3)
    stub.control(ticks="reset")
    latencies: list[float] = []
    run = _run(
        workers,
        stub,
        redis_server,
        during=lambda running: latencies.extend(
            login_to_rights(probes, keep_going=running, pause=LOGIN_PAUSE_SECONDS)
        ),
    )
    ticks = {int(tick): calls for tick, calls in stub.control(ticks="read")["ticks"].items()}
    figures.add("pacing_rate_limit_per_s", PACED_RATE_PER_SECOND)
    figures.add("pacing_run_users", run.users)
    figures.add("pacing_run_seconds", run.seconds)
    figures.add("pacing_run_users_per_s", run.users_per_s)
    figures.add_all(pacing_figures(ticks))
    figures.add_percentiles("pacing_login_to_rights", "ms_during", latencies)
    figures.add("pacing_login_to_rights_samples", len(latencies))
    figures.add("pacing_loadavg_1m_end", os.getloadavg()[0])
    print(f"pacing_curve: {curve(ticks)}", flush=True)
    data.delete_users(kind="pacing")


def _signals(
    mode, figures, stub, redis_server, workers, signals: Signals, *, web_env: dict, log_dir: Path
) -> None:
    """Figure 9: change signals, among `mode.users` users, through the web as shipped."""
    present = User.objects.filter(sub__startswith="user-").count()
    data.create_users(kind="user", indexes=range(present, mode.users))
    probes = synced_probes(kind="signal", count=2 * mode.signal_probes)
    data.analyze()
    figures.add("signal_users", User.objects.count())
    idle, _ = by_signal(change_to_rights(probes[: mode.signal_probes], signals=signals, stub=stub))
    figures.add_percentiles("signal_to_rights", "ms_idle", idle)

    samples = []
    _run(
        workers,
        stub,
        redis_server,
        during=lambda running: samples.extend(
            change_to_rights(
                probes[mode.signal_probes :], signals=signals, stub=stub, keep_going=running
            )
        ),
    )
    during, granted_by_run = by_signal(samples)
    if during:  # a smoke run's full run can end before a signal's sync is due
        figures.add_percentiles("signal_to_rights", "ms_fullrun", during)
    figures.add("signal_to_rights_fullrun_samples", len(during))
    figures.add("signal_to_rights_fullrun_granted_by_the_run_first", granted_by_run)
    data.delete_users(kind="signal")

    figures.add("signal_organisation_admins", mode.signal_organisation_admins)
    figures.add(
        "signal_organisation_all_asked_s",
        organisation_fan_out(signals=signals, admins=mode.signal_organisation_admins),
    )
    wait_until_idle(redis_server, workers)

    # The storm: half its users' answers change (their settled sync grants), half do not
    # (each is asked once more by the recheck). Logins are timed before and during it.
    half = mode.storm_users // 2
    storm_users = data.create_users(kind="sigstorm", indexes=range(half)) + data.create_users(
        kind="sigstorm", indexes=range(half, mode.storm_users), domains_each=0
    )
    logins = data.create_users(
        kind="sigstormlogin", indexes=range(2 * mode.rights_probes), status=OK
    )
    figures.add_percentiles(
        "signal_storm_login_to_rights",
        "ms_before",
        login_to_rights(logins[: mode.rights_probes // 4], pause=0.05),
    )
    calls_before = stub.control()["calls"]
    settle = settings.ENTITLEMENTS_CHANGE_SETTLE_SECONDS
    thread, during_storm = logins_during(logins[mode.rights_probes // 4 :], seconds=settle + 5)
    timings, seconds = signal_storm(
        signals=signals, users=storm_users, count=mode.signal_storm_signals
    )
    thread.join()
    time.sleep(settle_and_recheck_seconds())
    calls = stub.control()["calls"] - calls_before - len(during_storm)
    figures.add("signal_storm_signals", len(timings))
    figures.add("signal_storm_users", len(storm_users))
    figures.add("signal_storm_seconds", seconds)
    figures.add("signal_storm_upstream_calls_per_user", calls / len(storm_users))
    figures.add_percentiles("signal_storm_endpoint", "ms", timings)
    figures.add_percentiles("signal_storm_login_to_rights", "ms_during", during_storm)
    wait_until_idle(redis_server, workers)

    _endpoint_load(
        mode, figures, redis_server, workers, storm_users, web_env=web_env, log_dir=log_dir
    )
    for kind in ("sigstorm", "sigstormlogin", "org"):
        data.delete_users(kind=kind)
