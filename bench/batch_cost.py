"""Figure 15g: a batch's cost per user in-process: CPU, Redis's CPU and Redis round trips.

`sync_run_batch` runs in this process, batches of 100 users one after the other (8 fetch
threads each, as a bulk worker runs them), against a private redis-server, the DeployCenter
stub at 20 ms and the benchmark's database, with the benchmark's tuning (no cache, the rate
limit at 1,000/s). A first run grants everyone one domain; a counted run (every answer
changed) counts the Redis round trips (commands sent alone, pipelines) by thread; then each
measured run changes every answer again and reports this process's CPU per user (all its
threads), the redis-server's, and the users per second. Process CPU is far less noisy on a
shared machine than the end-to-end benchmark's; compare builds side by side (A B B A).

    BENCH_DATABASE_URL=postgres://.../messages_bench_x python -m bench.batch_cost --users 3000
"""

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import psutil

from bench.services import PrivateRedis, StubProcess, django_environment, ensure_database

BATCH_SIZE = 100
LATENCY_SECONDS = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--measured-runs", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", ""))
    args = parser.parse_args()
    if "bench" not in args.database_url:
        parser.error("--database-url (or BENCH_DATABASE_URL) must name a database with 'bench'")
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        redis_server = PrivateRedis(scratch)
        stack.callback(redis_server.stop)
        stub = StubProcess(log=scratch / "stub.log")
        stack.callback(stub.stop)
        ensure_database(args.database_url)
        # Not set_up_bench_process: this process is the worker here, logging at INFO as one
        # does, and the file also runs against checkouts older than that door (the A side).
        env = django_environment(
            database_url=args.database_url,
            redis_url=redis_server.url,
            stub=stub,
            data_dir=scratch / "data",
            extra={
                "ENTITLEMENTS_CACHE_TIMEOUT_SECONDS": "0",
                "ENTITLEMENTS_RATE_LIMIT_PER_SECOND": "1000",
                "ENTITLEMENTS_MAX_REVOKE_SHARE": "1",
            },
        )
        # Metrics counted in files, as in production (multiprocess mode).
        env["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
        (scratch / "metrics").mkdir()
        os.environ.update(env)
        figures = _measure(args.users, args.measured_runs, redis_server, stub)
    print(json.dumps(figures))


def _measure(users: int, measured_runs: int, redis_server, stub) -> dict:
    import django

    django.setup()
    from django.core.management import call_command

    from bench import data

    call_command("migrate", verbosity=0)
    data.empty_tables()
    data.create_domains()
    user_ids = [str(user.pk) for user in data.create_users(kind="cost", indexes=range(users))]
    data.analyze()
    batches = [user_ids[start : start + BATCH_SIZE] for start in range(0, users, BATCH_SIZE)]
    redis_process = psutil.Process(redis_server.process.pid)
    stub.control(latency=LATENCY_SECONDS, generation=0)
    _run("first", batches, users)
    stub.control(generation=1)
    with _counting_round_trips() as trips:
        _run("counted", batches, users)
    figures: dict = {
        "users": users,
        "round_trips_per_user_fetch_threads": round(trips.count(True) / users, 3),
        "round_trips_per_user": round(len(trips) / users, 3),
        "cpu_ms_per_user": [],
        "redis_cpu_ms_per_user": [],
        "users_per_s": [],
    }
    for generation in range(2, 2 + measured_runs):
        stub.control(generation=generation)
        redis_before = _cpu_seconds(redis_process)
        cpu_seconds, seconds = _run(f"changed{generation}", batches, users)
        redis_seconds = _cpu_seconds(redis_process) - redis_before
        figures["cpu_ms_per_user"].append(round(cpu_seconds * 1000 / users, 3))
        figures["redis_cpu_ms_per_user"].append(round(redis_seconds * 1000 / users, 3))
        figures["users_per_s"].append(round(users / seconds, 1))
    return figures


def _run(name: str, batches: list[list[str]], users: int) -> tuple[float, float]:
    """A run of every batch in turn; this process's CPU seconds and the wall seconds."""
    from core.entitlements import sync_run_batch
    from core.models import SyncRun, Trigger

    run = SyncRun.objects.create(
        scope=SyncRun.Scope.ALL,
        trigger=Trigger.PERIODIC,
        task_id=name,
        status=SyncRun.Status.RUNNING,
        revoke_budget=users,
    )
    cpu, wall = time.process_time(), time.perf_counter()
    for number, batch in enumerate(batches):
        sync_run_batch(
            run_id=run.pk, user_ids=batch, trigger=Trigger.PERIODIC, task_id=f"{name}-{number}"
        )
    return time.process_time() - cpu, time.perf_counter() - wall


@contextmanager
def _counting_round_trips() -> Iterator[list[bool]]:
    """Counts the Redis round trips made meanwhile: True for a batch's fetch thread's."""
    from redis import Redis
    from redis.client import Pipeline

    trips: list[bool] = []

    def counted(original):
        def send(self, *args, **kwargs):
            trips.append(threading.current_thread().name.startswith("sync-batch"))
            return original(self, *args, **kwargs)

        return send

    with ExitStack() as patches:
        # A command sent alone, a pipeline, and the script check a pipeline makes first.
        for owner, name in (
            (Redis, "execute_command"),
            (Pipeline, "execute"),
            (Pipeline, "immediate_execute_command"),
        ):
            patches.enter_context(mock.patch.object(owner, name, counted(getattr(owner, name))))
        yield trips


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


if __name__ == "__main__":
    main()
