"""`python -m bench.admin_pages --users 200000`: the operator's pages and /metrics at scale.

Loads N users in its own PostgreSQL database (generate_series, no ORM: 200,000 users load in
under a minute), each an admin of one of 1,000 domains with a sync state (95 % ok, 3 %
unavailable, 2 % never synced) and a finished full run, then times each admin page through
Django's test client, logged in as a superuser, and one /metrics scrape: the median and the
slowest of five after one warm-up. Prints the figures; asserts nothing (the SQL is proved by
tests/admin/test_list_pages_at_scale.py).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from bench.services import REPO, BenchSetupError, ensure_database

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/messages_bench_admin_pages"
_DOMAINS = 1000
_REPEATS = 5
_TOKEN = "bench-metrics-token"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.admin_pages", description=__doc__)
    parser.add_argument("--users", type=int, default=200_000, help="users to load")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database to use and empty; its name must contain 'bench'",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis the /metrics scrape reads queue depths from (read only)",
    )
    parser.add_argument("--keep", action="store_true", help="reuse the loaded users if present")
    return parser.parse_args(argv)


def _setup_django(args: argparse.Namespace) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "messages.settings",
            "DJANGO_SECRET_KEY": "benchmark-only-not-a-secret",
            "DATA_DIR": tempfile.mkdtemp(prefix="bench-admin-pages-"),
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "CACHE_KEY_PREFIX": "bench-admin-pages",
            "DJANGO_ALLOWED_HOSTS": "testserver",
            "METRICS_TOKEN": _TOKEN,
        }
    )
    sys.path.insert(0, str(REPO))
    import django
    from django.conf import settings

    django.setup()
    # The pages name static files; no collectstatic for a benchmark (as the tests do).
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def _load(users: int) -> float:
    """Empty the tables and load the users, their accesses and states; seconds taken."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE core_user, core_maildomain, core_syncrun, core_entitlementsyncstate, "
            "core_maildomainaccess, core_accessauditentry, core_heldrevocation CASCADE"
        )
        cursor.execute(
            "INSERT INTO core_user (id, password, is_superuser, created_at, updated_at, sub, "
            "email, full_name, is_staff, is_active) "
            "SELECT gen_random_uuid(), '!', false, now(), now(), 'sub-' || g, "
            "'user' || g || '@bench.example.org', '', false, true FROM generate_series(1, %s) g",
            [users],
        )
        cursor.execute(
            "INSERT INTO core_maildomain (id, created_at, updated_at, name, custom_attributes) "
            "SELECT gen_random_uuid(), now(), now(), 'd' || g || '.example.org', '{}' "
            "FROM generate_series(0, %s) g",
            [_DOMAINS - 1],
        )
        cursor.execute(
            "INSERT INTO core_maildomainaccess (id, created_at, updated_at, maildomain_id, "
            "user_id, role, source) "
            "SELECT gen_random_uuid(), now(), now(), d.id, u.id, 'admin', 'entitlements' "
            "FROM (SELECT id, row_number() OVER () AS n FROM core_user) u "
            "JOIN (SELECT id, row_number() OVER () - 1 AS n FROM core_maildomain) d "
            "ON d.n = u.n %% %s",
            [_DOMAINS],
        )
        # Synced over the last two hours: most ok, some unavailable, a few never.
        cursor.execute(
            "INSERT INTO core_entitlementsyncstate (user_id, forwarded_claims, status, "
            "error_code, finished_at, entitled_domains, answer_fingerprint, upstream_identity, "
            "last_trigger, last_task_id, rights_confirmed_at) "
            "SELECT id, '{}', s.status, CASE s.status WHEN 'unavailable' THEN 'http_503' "
            "ELSE '' END, s.at, CASE s.status WHEN 'never' THEN '[]' "
            "ELSE '[\"d1.example.org\"]' END::jsonb, '', '', 'periodic', '', "
            "CASE WHEN s.status = 'ok' THEN s.at END "
            "FROM (SELECT id, now() - random() * interval '2 hours' AS at, "
            "CASE WHEN random() < 0.95 THEN 'ok' WHEN random() < 0.6 THEN 'unavailable' "
            "ELSE 'never' END AS status FROM core_user) s"
        )
        cursor.execute(
            "INSERT INTO core_syncrun (scope, maildomain_name, trigger, task_id, status, "
            "started_at, finished_at, users_enqueued, users_done, users_changed, users_failed, "
            "users_skipped, error_code, revocable_accesses, revoke_budget, accesses_revoked, "
            "budget_reached) VALUES ('all', '', 'periodic', '', 'done', "
            "now() - interval '2 hours', now(), %s, %s, 0, 0, 0, '', %s, 0, 0, false)",
            [users, users, users],
        )
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def _pages() -> dict[str, str]:
    from django.urls import reverse

    from core.models import SyncRun

    users = reverse("admin:core_user_changelist")
    states = reverse("admin:core_entitlementsyncstate_changelist")
    run = SyncRun.objects.filter(scope="all").order_by("-started_at").first()
    return {
        "admin index (Service at a glance)": reverse("admin:index"),
        "users list": users,
        "users list, page 100": f"{users}?p=100",
        "users list, sync status ok": f"{users}?sync_state__status__exact=ok",
        "users list, stale admins (two intervals)": f"{users}?unconfirmed_intervals=2",
        "users list, search an e-mail": f"{users}?q=user123456%40bench.example.org",
        "sync states list": states,
        "sync states list, error code http_503": f"{states}?error_code=http_503",
        "sync states list, trigger periodic": f"{states}?last_trigger__exact=periodic",
        "runs list": reverse("admin:core_syncrun_changelist"),
        "run page (its curve)": reverse("admin:core_syncrun_change", args=[run.pk]),
        "/metrics scrape": "/metrics",
    }


def _time(client, url: str) -> tuple[float, float]:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {_TOKEN}"} if url == "/metrics" else {}
    response = client.get(url, **headers)
    if response.status_code != 200:
        raise BenchSetupError(f"{url} answered {response.status_code}")
    times = []
    for _ in range(_REPEATS):
        started = time.perf_counter()
        client.get(url, **headers)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, max(times) * 1000


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ensure_database(args.database_url)
    except BenchSetupError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    _setup_django(args)
    from django.core.management import call_command
    from django.test import Client

    from core.models import User

    call_command("migrate", verbosity=0)
    if args.keep and User.objects.count() >= args.users:
        print(f"reusing the {User.objects.count():,} users loaded")
    else:
        print(f"loaded {args.users:,} users in {_load(args.users):.1f} s")
    operator = User.objects.filter(email="bench-operator@example.org").first()
    operator = operator or User.objects.create_superuser("bench-operator@example.org", None)
    client = Client()
    client.force_login(operator)
    print(f"{'page':45} {'median ms':>10} {'max ms':>10}")
    for name, url in _pages().items():
        median, slowest = _time(client, url)
        print(f"{name:45} {median:10.0f} {slowest:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
