"""What one login costs, part by part (figure 14): `python -m bench.login_parts`.

Times `core.authentication.request_login_sync` in this process, against PostgreSQL and a
private redis-server (no worker, nothing consumes the queue), and each of its parts by
wrapping the functions it goes through: the request's statements (the claims are stored in
the same UPDATE), the broker publish of the task, the `task-sent` event (Flower's), the Redis
clients kombu builds; and counts its SQL statements and Redis commands. Logins are paced (one
every 20 ms, as figure 1's) or back to back (`--every 0`).

Runs against any commit of this repository (it only wraps public names of Django, kombu and
Celery and two functions of core), so a commit before a change can be measured beside it:
copy this file into that checkout's bench/ and run it there.
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
    from celery.events.dispatcher import EventDispatcher
    from django.db.backends.utils import CursorWrapper
    from kombu import Producer
    from kombu.transport import redis as kombu_redis

    from core.entitlements import sync_requests

    sync_requests._record_and_claim = _timed("request_sql", sync_requests._record_and_claim)
    sync_requests._send = _timed("on_commit_send", sync_requests._send)
    EventDispatcher.publish = _timed("task_sent_event", EventDispatcher.publish)
    publish = Producer.publish

    def producer_publish(self, body, *args, exchange="", **kwargs):
        # The event dispatcher publishes through the same method: told apart by exchange.
        name = "event_publish" if str(getattr(exchange, "name", exchange)) == "celeryev" else None
        return _timed(name or "task_publish", publish)(
            self, body, *args, exchange=exchange, **kwargs
        )

    Producer.publish = producer_publish
    kombu_redis.Channel._create_client = _timed(
        "redis_client_built", kombu_redis.Channel._create_client
    )
    CursorWrapper.execute = _timed("sql_statements", CursorWrapper.execute)


def _percentiles(values: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49], 3), round(cuts[98], 3)


def measure(*, logins: int, every: float, warmup: int = 50) -> dict[str, str]:
    """name=value figures of `logins` timed logins (after `warmup` untimed ones)."""
    from bench import data
    from bench.logins import LOGIN_CLAIMS
    from core.authentication import request_login_sync
    from core.models import EntitlementSyncState

    users = data.create_users(kind="parts", indexes=range(logins + warmup))
    for user in users[:warmup]:
        request_login_sync(user=user, claims=LOGIN_CLAIMS)
    _instrument()
    redis_client = _broker_redis()
    commands_before = _redis_commands(redis_client)
    totals: list[float] = []
    parts: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    started = time.perf_counter()
    for number, user in enumerate(users[warmup:]):
        delay = started + number * every - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        _spent.clear()
        _counts.clear()
        begin = time.perf_counter()
        receipt = request_login_sync(user=user, claims=LOGIN_CLAIMS)
        totals.append((time.perf_counter() - begin) * 1000)
        assert receipt.task_id, "every timed login is a user's first: it sends a task"
        for name in (
            "request_sql",
            "on_commit_send",
            "task_publish",
            "event_publish",
            "redis_client_built",
        ):
            parts[name].append(_spent[name] * 1000)
        for name, count in _counts.items():
            counts[name] += count
    commands = _redis_commands(redis_client) - commands_before
    figures = {}
    figures["login_parts_logins"] = str(logins)
    figures["login_parts_every_ms"] = str(round(every * 1000, 1))
    p50, p99 = _percentiles(totals)
    figures["login_parts_total_ms_p50"], figures["login_parts_total_ms_p99"] = str(p50), str(p99)
    rest = [
        total - parts["request_sql"][i] - parts["on_commit_send"][i]
        for i, total in enumerate(totals)
    ]
    parts["rest"] = rest
    for name, values in parts.items():
        p50, p99 = _percentiles(values)
        figures[f"login_parts_{name}_ms_p50"] = str(p50)
        figures[f"login_parts_{name}_ms_p99"] = str(p99)
    for name in ("sql_statements", "redis_client_built", "task_publish", "event_publish"):
        figures[f"login_parts_{name}_per_login"] = str(round(counts[name] / logins, 2))
    # The INFO call itself is one command; the measuring client's CLIENT SETNAME etc. none.
    figures["login_parts_redis_commands_per_login"] = str(round((commands - 1) / logins, 2))
    EntitlementSyncState.objects.filter(user__in=users).update(enqueued_at=None)
    data.delete_users(kind="parts")
    return figures


def _broker_redis():
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def _redis_commands(client) -> int:
    """Commands the Redis server has run, all clients together (INFO commandstats)."""
    return sum(stats["calls"] for stats in client.info("commandstats").values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=1000)
    parser.add_argument("--every", type=float, default=0.02, help="seconds between logins")
    args = parser.parse_args()
    database_url = os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/messages_bench"
    )
    from bench.services import PrivateRedis, ensure_database

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-parts-")))
        redis_server = PrivateRedis(scratch)
        stack.callback(redis_server.stop)
        ensure_database(database_url)
        for key in list(os.environ):
            if key.startswith(("ENTITLEMENTS_", "CELERY_", "DJANGO_", "DATABASE_", "REDIS_")):
                del os.environ[key]
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "messages.settings",
                "DJANGO_SECRET_KEY": "benchmark-only-not-a-secret",
                "DATA_DIR": str(scratch / "data"),
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_server.url,
                "LOG_LEVEL": "WARNING",
            }
        )
        import django

        django.setup()
        from django.core.management import call_command

        from bench import data

        call_command("migrate", verbosity=0)
        data.empty_tables()
        for name, value in measure(logins=args.logins, every=args.every).items():
            print(f"{name}={value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
