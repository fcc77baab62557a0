"""What one login costs, part by part (figures 14, 15l, 15m): `python -m bench.login_parts`.

Times `core.authentication.request_login_sync` in this process, against PostgreSQL and a
private redis-server (with `--under-load`, while the Procfile's workers run the syncs these
logins start, as figure 1 does; else nothing consumes the queue), and each of its parts by
wrapping the functions it goes through: the request's statements (the claims are stored in
the same UPDATE) with their commit, the publish run on commit (the task and its `task-sent`
event, Flower's), split into the time spent talking to Redis and the rest (Celery and kombu
building the messages), and the CPU time the login took in this process (not the servers'); and
counts its SQL statements, Redis round trips and the Redis clients kombu builds. Logins are
paced (one every 20 ms, as figure 1's) or back to back (`--every 0`). `--alternate` has the
logins take turns with and without one figure's changes (15l's by default, `--alternate 14`),
in one process: both sides share the machine's state.

Without `--alternate`, runs against any commit of this repository (it only wraps public names
of Django, kombu and Celery and two functions of core), so a commit before a change can be
measured beside it: copy this file into that checkout's bench/ and run it there.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

# Counters every wrapper adds to, per login.
_spent: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)


def _timed(name: str, function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _spent[name] += time.perf_counter() - started
            _counts[name] += 1

    return wrapper


def _instrument() -> None:
    """Wrap the parts of a login; imports are late: Django is set up by then."""
    import redis
    from django.db.backends.utils import CursorWrapper
    from kombu.transport import redis as kombu_redis

    from core.entitlements import sync_requests

    sync_requests._record_and_claim = _timed("request_sql", sync_requests._record_and_claim)
    sync_requests._send = _timed("on_commit_send", sync_requests._send)
    # Time spent talking to Redis: one command, or a pipeline of them (PublishBatch's).
    redis.Redis.execute_command = _timed("redis_io", redis.Redis.execute_command)
    redis.client.Pipeline.execute = _timed("redis_io", redis.client.Pipeline.execute)
    connection = redis.connection.AbstractConnection
    connection.send_packed_command = _timed("redis_round_trips", connection.send_packed_command)
    kombu_redis.Channel._create_client = _timed(
        "redis_clients_built", kombu_redis.Channel._create_client
    )
    CursorWrapper.execute = _timed("sql_statements", CursorWrapper.execute)


def _percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49], 3), round(cuts[98], 3)


# Celery's defaults figure 15l writes out in the settings (undefined, a lookup costs more).
_CELERY_DEFAULTS = (
    "CELERY_TASK_ALWAYS_EAGER",
    "CELERY_TASK_REPR_MAXLEVELS",
    "CELERY_BROKER_POOL_ACQUIRE_TIMEOUT",
)


# The workers `--alternate nice` renices, login by login (`measure`'s `workers`), and how much
# deeper than the Procfile's the "after" side puts them (`--deeper-nice`; 0: figure 15m).
_workers: list = []
_deeper_nice = 0


def _renice(*, changes: bool) -> None:
    """Figure 15m's niceness: the interactive and signals workers at the Procfile's (5), or at
    0 as before; the bulk worker keeps its 10 either way. With `--deeper-nice K`, the "before"
    side is the Procfile's niceness and the "after" side every worker K deeper (at most 19)."""
    import psutil

    if not hasattr(_renice, "processes"):
        # Listed once: a tree walk reads all of /proc (the prefork pools do not change).
        _renice.processes = [  # type: ignore[attr-defined]
            (worker.spec.niceness, process) for worker in _workers for process in worker.tree()
        ]
    for shipped, process in _renice.processes:  # type: ignore[attr-defined]
        if _deeper_nice:
            niceness = min(shipped + _deeper_nice, 19) if changes else shipped
        else:
            niceness = shipped if changes or shipped >= 10 else 0
        try:
            process.nice(niceness)
        except psutil.NoSuchProcess:
            continue


def _switch(*, changes: bool, figure: str) -> None:
    """`changes=False` undoes, for the next logins, what the figure changed; `--alternate`
    flips it login by login, so both sides share the machine's state.

    Figure 15m: `nice`, the interactive and signals workers at niceness 0 again (`--under-load`
    only); `prepare`, the request's UPDATE sent whole instead of as a prepared statement.
    Figure 14: the commit waits for the disk again and kombu builds a Redis client per publish
    (the ORM filter stays). Figure 15l: the ORM builds the request's UPDATE at every login
    again (the compiled statement is compiled anew each time) and Celery's defaults are no
    longer written in the settings."""
    from contextlib import nullcontext

    from django.conf import settings
    from kombu.transport import redis as kombu_redis

    from core.compiled_updates import CompiledUpdate
    from core.entitlements import sync_requests
    from messages import redis_broker

    if figure == "nice":
        _renice(changes=changes)
        return
    if figure == "prepare":
        settings.DB_PREPARED_UPDATES = changes
        return
    if figure == "no-sent-event":
        # What the login would save without Flower's view of queued syncs: an upper bound for
        # merging the task and its event into one round trip.
        from celery import current_app

        current_app.conf.task_send_sent_event = not changes
        return
    if not hasattr(_switch, "changed"):
        _switch.changed = {  # type: ignore[attr-defined]
            "wrapper": sync_requests._commits_not_waiting_for_the_disk,
            "conn_or_acquire": redis_broker.Channel.__dict__["conn_or_acquire"],
            "compiled": CompiledUpdate.compiled,
            **{name: getattr(settings, name) for name in _CELERY_DEFAULTS},
        }
    changed = _switch.changed  # type: ignore[attr-defined]
    if figure == "14":
        sync_requests._commits_not_waiting_for_the_disk = (
            changed["wrapper"] if changes else nullcontext
        )
        redis_broker.Channel.conn_or_acquire = (
            changed["conn_or_acquire"]
            if changes
            else kombu_redis.Channel.__dict__["conn_or_acquire"]
        )
        return
    CompiledUpdate.compiled = changed["compiled"] if changes else CompiledUpdate._compile
    for name in _CELERY_DEFAULTS:
        if changes:
            setattr(settings, name, changed[name])
        elif hasattr(settings, name):
            delattr(settings, name)


def measure(
    *,
    logins: int,
    every: float,
    alternate: str | None,
    warmup: int = 50,
    profile: str | None = None,
) -> dict[str, str]:
    """name=value figures of `logins` timed logins (after `warmup` untimed ones); with
    `alternate` (a figure), of each side (`before`, `after`: see `_switch`), logins taking
    turns."""
    from bench import data
    from bench.logins import LOGIN_CLAIMS
    from core.authentication import request_login_sync

    users = data.create_users(kind="parts", indexes=range(logins + warmup))
    for user in users[:warmup]:
        request_login_sync(user=user, claims=LOGIN_CLAIMS)
    _instrument()
    sides = ("before", "after") if alternate else ("",)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    totals: dict[str, list[float]] = defaultdict(list)
    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    started = time.perf_counter()
    for number, user in enumerate(users[warmup:]):
        side = sides[number % len(sides)]
        if alternate:
            _switch(changes=side == "after", figure=alternate)
        delay = started + number * every - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        _spent.clear()
        _counts.clear()
        if profiler:
            profiler.enable()
        begin, cpu_begin = time.perf_counter(), time.process_time()
        receipt = request_login_sync(user=user, claims=LOGIN_CLAIMS)
        total = (time.perf_counter() - begin) * 1000
        if profiler:
            profiler.disable()
        # This process's CPU only (not PostgreSQL's or Redis's): less noisy than the wall time.
        parts[side]["process_cpu"].append((time.process_time() - cpu_begin) * 1000)
        assert receipt.task_id, "every timed login is a user's first: it sends a task"
        totals[side].append(total)
        for name in ("request_sql", "on_commit_send", "redis_io"):
            parts[side][name].append(_spent[name] * 1000)
        parts[side]["celery_kombu"].append((_spent["on_commit_send"] - _spent["redis_io"]) * 1000)
        parts[side]["rest"].append(
            total - (_spent["request_sql"] + _spent["on_commit_send"]) * 1000
        )
        for name, count in _counts.items():
            counts[side][name] += count
    figures = {
        "login_parts_alternate": alternate or "",
        "login_parts_logins": str(logins),
        "login_parts_every_ms": str(round(every * 1000, 1)),
    }
    for side in sides:
        prefix = f"login_parts_{side}_" if side else "login_parts_"
        for name, values in {"total": totals[side], **parts[side]}.items():
            p50, p99 = _percentiles(values)
            figures[f"{prefix}{name}_ms_p50"] = str(p50)
            figures[f"{prefix}{name}_ms_p99"] = str(p99)
        for name in ("sql_statements", "redis_round_trips", "redis_clients_built"):
            per_login = counts[side][name] / len(totals[side])
            figures[f"{prefix}{name}_per_login"] = str(round(per_login, 2))
    if profiler and profile:
        profiler.dump_stats(profile)
    # The users stay: syncs may still run for them (the tables are emptied at the next start).
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=1000)
    parser.add_argument("--every", type=float, default=0.02, help="seconds between logins")
    parser.add_argument(
        "--under-load",
        action="store_true",
        help="with the Procfile's workers running the syncs the logins start (stub at 25 ms), "
        "as in figure 1",
    )
    parser.add_argument(
        "--alternate",
        nargs="?",
        const="15l",
        choices=("14", "15l", "nice", "prepare", "no-sent-event"),
        help="logins take turns with and without the changes of figure 14 or 15l (the "
        "default), or of figure 15m: the workers' niceness (`nice`, with --under-load) or the "
        "prepared UPDATE (`prepare`), in this checkout; `no-sent-event`: the task-sent event "
        "left out (an upper bound for the task and its event in one round trip)",
    )
    parser.add_argument(
        "--deeper-nice",
        type=int,
        default=0,
        metavar="K",
        help="with --alternate nice: compare the Procfile's niceness with every worker K deeper "
        "(instead of with the one-user workers at 0)",
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="cProfile the timed logins into FILE (pstats)"
    )
    args = parser.parse_args()
    if args.deeper_nice and args.alternate != "nice":
        parser.error("--deeper-nice goes with --alternate nice")
    if not 0 <= args.deeper_nice <= 19:
        parser.error("--deeper-nice is a niceness step from 0 to 19")
    global _deeper_nice
    _deeper_nice = args.deeper_nice
    database_url = os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/messages_bench"
    )
    from bench.cli import LOG_DIR, RATE_LIMIT_PER_SECOND
    from bench.services import PrivateRedis, StubProcess, django_environment, ensure_database

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-parts-")))
        redis_server = PrivateRedis(scratch)
        stack.callback(redis_server.stop)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        stub = StubProcess(log=LOG_DIR / "stub.log")
        stack.callback(stub.stop)
        ensure_database(database_url)
        env = django_environment(
            database_url=database_url,
            redis_url=redis_server.url,
            stub=stub,
            data_dir=scratch / "data",
            extra={
                "ENTITLEMENTS_CACHE_TIMEOUT_SECONDS": "0",
                "ENTITLEMENTS_RATE_LIMIT_PER_SECOND": str(RATE_LIMIT_PER_SECOND),
            },
        )
        os.environ.clear()
        os.environ.update({**env, "LOG_LEVEL": "WARNING"})
        import django

        django.setup()
        from django.core.management import call_command

        from bench import data
        from bench.layout import shipped_workers
        from bench.scenarios import running_workers

        call_command("migrate", verbosity=0)
        data.empty_tables()
        data.create_domains()
        if args.under_load:
            stub.control(latency=0.025, generation=0)
            _workers[:] = stack.enter_context(
                running_workers(
                    shipped_workers(environ=dict(os.environ)),
                    env={**env, "LOG_LEVEL": "INFO"},
                    log_dir=LOG_DIR,
                )
            )
        elif args.alternate == "nice":
            parser.error("--alternate nice needs --under-load (workers to renice)")
        print(f"login_parts_under_load={int(args.under_load)}", flush=True)
        for name, value in measure(
            logins=args.logins, every=args.every, alternate=args.alternate, profile=args.profile
        ).items():
            print(f"{name}={value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
