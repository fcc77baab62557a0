"""`python -m bench.table_size`: does a user's sync cost more when the tables hold a million?

bench.million compares a half-hour run with 20-second ones taken before and after, and the
machine's pace moves by a fifth within minutes (bench/speed_probe.py), enough to hide or fake
the 10 % it looks for. This takes the pace out: two processes, one on a database loaded with
`--small` users, one on a database loaded with `--large` (bench/million_data.py, as
bench.million loads them), each with its own private Redis and the same stub at 20 ms, run
the batch path in turns (`sync_run_batch`, batches of 50 users one after the other, 8 fetch
threads each, as a bulk worker runs them), a round of `--round-users` each, in the order
small, large, large, small, ... So both sizes meet the same moments of the machine. Each
round's users are synced for the first time since the load (every one changes: one domain
granted, one revoked, as in the benchmark's runs), and each round counts the CPU of the
process, of its database sessions and of its Redis, and its users per second.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/messages_bench_<name> \\
        flock /work/wt/bench.lock .venv/bin/python -m bench.table_size

The two databases are BENCH_DATABASE_URL's name with `_small` and `_large` appended (both
emptied). About a minute to load a million, then about 4 s per round (figure 17: ~3.5 minutes
in all with the default ten rounds of each size).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

from bench.services import (
    BenchSetupError,
    PrivateRedis,
    StubProcess,
    cpu_snapshot,
    cpu_used,
    database_sessions,
    django_environment,
    ensure_database,
)

BATCH_SIZE = 50
_PARTS = ("process_cpu", "postgres_cpu", "redis_cpu")
LATENCY_SECONDS = 0.02
TUNING = {
    "ENTITLEMENTS_CACHE_TIMEOUT_SECONDS": "0",
    "ENTITLEMENTS_RATE_LIMIT_PER_SECOND": "1000",
    "ENTITLEMENTS_MAX_REVOKE_SHARE": "1",
}


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.table_size",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--small", type=_positive, default=10_000, help="users, small tables")
    parser.add_argument("--large", type=_positive, default=1_000_000, help="users, large tables")
    parser.add_argument("--rounds", type=_positive, default=10, help="rounds of each size")
    parser.add_argument("--round-users", type=_positive, default=1000, help="users per round")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", ""), help="base name"
    )
    parser.add_argument(
        "--before-migration",
        metavar="APP:MIGRATION",
        help="compare a schema change instead of two sizes: both sides hold --large users, "
        "the first with its database migrated back to this migration (e.g. core:0012); "
        "today's code runs on it, so it must hold every table the code needs",
    )
    parser.add_argument("--migrate-to", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(
            users=args.users,
            rounds=args.rounds,
            round_users=args.round_users,
            migrate_to=args.migrate_to,
        )
    if "bench" not in args.database_url:
        parser.error("--database-url (or BENCH_DATABASE_URL) must name a database with 'bench'")
    held = min(user for _, user, _ in _sides(args))
    if args.rounds * args.round_users > held:
        parser.error(
            f"--rounds x --round-users ({args.rounds * args.round_users:,}) is more users than "
            f"the tables hold ({held:,}): each round syncs users never synced before"
        )
    try:
        figures = _alternate(args)
    except BenchSetupError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    print(_report(figures, args))
    return 0


class _Side:
    """One size: its child process, its Redis, its database's name."""

    def __init__(
        self,
        name: str,
        users: int,
        *,
        args,
        stub,
        scratch: Path,
        stack: ExitStack,
        migrate_to: str | None = None,
    ):
        self.name = name
        self.users = users
        self.database_url = f"{args.database_url}_{name}"
        self.database = self.database_url.rsplit("/", 1)[1]
        ensure_database(self.database_url)
        (scratch / name / "metrics").mkdir(parents=True)
        self.redis = PrivateRedis(scratch / name)
        stack.callback(self.redis.stop)
        env = django_environment(
            database_url=self.database_url,
            redis_url=self.redis.url,
            stub=stub,
            data_dir=scratch / name / "data",
            extra=TUNING,
        )
        env["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / name / "metrics")
        command = [sys.executable, "-m", "bench.table_size", "--child", "--users", str(users)]
        self.process = subprocess.Popen(
            [*command, "--round-users", str(args.round_users), "--rounds", str(args.rounds)]
            + (["--migrate-to", migrate_to] if migrate_to else []),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Its log (INFO, a line per user, as a worker's) is paid for, not printed.
            stderr=(scratch / name / "log.txt").open("w"),
            text=True,
        )
        stack.callback(self.process.kill)

    def ready(self) -> float:
        """Wait for the child's load; its seconds."""
        return json.loads(self._line())["loaded_seconds"]

    def round(self) -> dict:
        """One round in the child; its figures, with its Redis's and its sessions' CPU."""
        redis = [psutil.Process(self.redis.process.pid)]
        redis_before = cpu_snapshot(redis)
        postgres_before = cpu_snapshot(database_sessions(self.database))
        assert self.process.stdin is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        figures = json.loads(self._line())
        figures["redis_cpu"] = cpu_used(redis_before, cpu_snapshot(redis))
        figures["postgres_cpu"] = cpu_used(
            postgres_before, cpu_snapshot(database_sessions(self.database))
        )
        return figures

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise BenchSetupError(f"the {self.name} side ended (exit {self.process.wait()})")
        return line


def _alternate(args) -> dict[str, list[dict]]:
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        stub = StubProcess(log=scratch / "stub.log")
        stack.callback(stub.stop)
        stub.control(latency=LATENCY_SECONDS, generation=1)
        sides = {
            name: _Side(
                name, users, args=args, stub=stub, scratch=scratch, stack=stack, migrate_to=to
            )
            for name, users, to in _sides(args)
        }
        for side in sides.values():
            print(f"{side.name}: {side.users:,} users loaded in {side.ready():.0f} s", flush=True)
        figures: dict[str, list[dict]] = {name: [] for name in sides}
        first, second = sides
        order = [first, second, second, first]
        for number in range(2 * args.rounds):
            name = order[number % 4]
            figures[name].append(sides[name].round())
            print(f"round {number + 1}, {name}: {_line(figures[name][-1])}", flush=True)
        return figures


def _sides(args) -> list[tuple[str, int, str | None]]:
    """(name, users, migration to go back to) of the two sides, the baseline first."""
    if args.before_migration:
        return [("before", args.large, args.before_migration), ("after", args.large, None)]
    return [("small", args.small, None), ("large", args.large, None)]


def _line(figures: dict) -> str:
    users = figures["users"]
    return (
        f"{users / figures['seconds']:.0f} users/s, CPU ms/user: process "
        f"{1000 * figures['process_cpu'] / users:.2f}, PostgreSQL "
        f"{1000 * figures['postgres_cpu'] / users:.2f}, "
        f"Redis {1000 * figures['redis_cpu'] / users:.2f}"
    )


def ratio(other: float, base: float) -> str:
    """`other / base` as the report prints it; "-" when the base measured nothing (a small
    round's Redis CPU can be under the clock's 10 ms tick)."""
    return f"{other / base:.3f}" if base else "-"


def _report(figures: dict[str, list[dict]], args) -> str:
    def per_user(name: str, key: str) -> float:
        return statistics.mean(1000 * round_[key] / round_["users"] for round_ in figures[name])

    def rate(name: str) -> float:
        return statistics.mean(round_["users"] / round_["seconds"] for round_ in figures[name])

    (first, first_users, _), (second, second_users, _) = _sides(args)
    users = {first: first_users, second: second_users}
    lines = [f"{'':28}{first:>12}{second:>12}{f'{second}/{first}':>13}"]
    rows = [("users in the tables", lambda name: float(users[name]), "{:,.0f}")]
    rows += [("users/s", rate, "{:.1f}")]
    for key, label in (
        ("process_cpu", "process CPU ms/user"),
        ("postgres_cpu", "PostgreSQL CPU ms/user"),
        ("redis_cpu", "Redis CPU ms/user"),
    ):
        rows.append((label, lambda name, key=key: per_user(name, key), "{:.3f}"))
    rows.append(
        (
            "all three, ms/user",
            lambda name: sum(per_user(name, part) for part in _PARTS),
            "{:.3f}",
        )
    )
    for label, value, form in rows:
        base, other = value(first), value(second)
        lines.append(
            f"{label:28}{form.format(base):>12}{form.format(other):>12}{ratio(other, base):>13}"
        )
    lines.append(
        f"{args.rounds} rounds of {args.round_users:,} users each, order "
        f"{first} {second} {second} {first}"
        + (f"; '{first}' migrated back to {args.before_migration}" if args.before_migration else "")
    )
    return "\n".join(lines)


def _child(*, users: int, rounds: int, round_users: int, migrate_to: str | None) -> int:
    """Load the tables, then run a round of batches at each line read; print its figures."""
    import django

    django.setup()
    from django.core.management import call_command

    from bench import million_data
    from core.entitlements import sync_run_batch
    from core.models import SyncRun, Trigger, User

    call_command("migrate", verbosity=0)
    if migrate_to:
        app, migration = migrate_to.split(":")
        call_command("migrate", app, migration, verbosity=0)
    loaded = million_data.load(users)
    # Users in a random order, spread over the whole tables, never synced twice.
    synced = User.objects.order_by("?").values_list("pk", flat=True)[: rounds * round_users]
    user_ids = [str(pk) for pk in synced]
    print(json.dumps({"loaded_seconds": loaded}), flush=True)
    for number, _ in enumerate(sys.stdin):
        batch_users = user_ids[number * round_users : (number + 1) * round_users]
        run = SyncRun.objects.create(
            scope=SyncRun.Scope.ALL,
            trigger=Trigger.PERIODIC,
            task_id=f"round-{number}",
            status=SyncRun.Status.RUNNING,
            revoke_budget=round_users,
            users_enqueued=round_users,
        )
        # All the process's threads: the batch's and its fetch threads.
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, round_users, BATCH_SIZE):
            sync_run_batch(
                run_id=run.pk,
                user_ids=batch_users[start : start + BATCH_SIZE],
                trigger=Trigger.PERIODIC,
                task_id=f"round-{number}-{start}",
            )
        figures = {
            "users": round_users,
            "seconds": time.perf_counter() - wall,
            "process_cpu": time.process_time() - cpu,
        }
        print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
