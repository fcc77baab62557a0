"""The large runs' data, loaded in SQL, and the plans of one batch's queries on it.

`load(users)` writes what an earlier run would have left: `user-<i>-1@bench.example` (the
stub's formula, bench/stub.py) with its forwarded siret, its sync-made ADMIN access to
`d<i mod 1000>` (the stub's answer at generation 0), and an `ok` sync state recording that
answer. generate_series and INSERT ... SELECT, no ORM, no Python row.
"""

import json
import random
import time

from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from bench.stub import DOMAIN_COUNT, EMAIL_DOMAIN
from tests.deploycenter_stub import ALPHA_SIRET
from tests.support import query_plans

# A scan whose planner estimate reaches this many rows reads a share of a large table, not a
# batch's users: a batch is 100 users, a few hundred accesses.
LARGE_ROWS = 10_000
_TABLES = (
    "core_user, core_maildomain, core_syncrun, core_entitlementsyncstate, "
    "core_maildomainaccess, core_accessauditentry, core_heldrevocation, "
    "django_celery_results_taskresult"
)


def load(users: int) -> float:
    """Empty the tables and load `users` admins with their accesses and states; seconds taken
    (the ANALYZE that follows a bulk load included)."""
    started = time.perf_counter()
    claims = json.dumps({"siret": ALPHA_SIRET})
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {_TABLES} CASCADE")
        cursor.execute(
            "INSERT INTO core_maildomain (id, created_at, updated_at, name, custom_attributes) "
            "SELECT gen_random_uuid(), now(), now(), 'd' || g || %s, '{}' "
            "FROM generate_series(0, %s) g",
            [f".{EMAIL_DOMAIN}", DOMAIN_COUNT - 1],
        )
        cursor.execute(
            "INSERT INTO core_user (id, password, is_superuser, created_at, updated_at, sub, "
            "email, full_name, is_staff, is_active) "
            "SELECT gen_random_uuid(), '!', false, now(), now(), 'user-' || g, "
            "'user-' || g || '-1@' || %s, '', false, true FROM generate_series(0, %s) g",
            [EMAIL_DOMAIN, users - 1],
        )
        # Each user's number is in its sub: `user-<i>`; its domain is d<i mod 1000>.
        cursor.execute(
            "CREATE TEMPORARY TABLE bench_admin ON COMMIT DROP AS "
            "SELECT u.id AS user_id, u.email, d.id AS maildomain_id, d.name AS domain "
            "FROM core_user u JOIN core_maildomain d "
            "ON d.name = 'd' || (split_part(u.sub, '-', 2)::int %% %s) || %s",
            [DOMAIN_COUNT, f".{EMAIL_DOMAIN}"],
        )
        cursor.execute(
            "INSERT INTO core_maildomainaccess (id, created_at, updated_at, maildomain_id, "
            "user_id, role, source) "
            "SELECT gen_random_uuid(), now(), now(), maildomain_id, user_id, 'admin', "
            "'entitlements' FROM bench_admin"
        )
        # Confirmed an hour ago by the answer it recorded, with the e-mail's digest (the
        # identity rule's) so the run's revocations are not held as after an e-mail change.
        cursor.execute(
            "INSERT INTO core_entitlementsyncstate (user_id, forwarded_claims, status, "
            "error_code, started_at, finished_at, entitled_domains, answer_fingerprint, "
            "upstream_identity, last_trigger, last_task_id, rights_confirmed_at) "
            "SELECT user_id, %s::jsonb, 'ok', '', now() - interval '1 hour', "
            "now() - interval '1 hour', jsonb_build_array(domain), '', "
            "encode(sha256(convert_to(email, 'UTF8')), 'hex'), 'periodic', '', "
            "now() - interval '1 hour' FROM bench_admin",
            [claims],
        )
        cursor.execute("DROP TABLE bench_admin")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def plan_findings(sql: str, *, rows: dict[str, int]) -> list[str]:
    """What in the plan of one statement grows with the tables: a scan reading a whole table
    of LARGE_ROWS or more, or any node the planner expects LARGE_ROWS rows from."""
    plan = query_plans.explain(sql)
    found = query_plans.whole_table_scans(plan, rows=rows, large=LARGE_ROWS)
    return found + [
        f"{node['Node Type']} expecting {node['Plan Rows']:,} rows"
        for node in query_plans.nodes(plan)
        if node.get("Plan Rows", 0) >= LARGE_ROWS and node["Node Type"] != "Seq Scan"
    ]


def batch_queries(*, users: int, sample: int) -> list[str]:
    """Run one batch of `sample` of the loaded users in this process (to the stub, as a worker
    would) and return every SQL statement it sent to PostgreSQL."""
    from core.entitlements import sync_run_batch
    from core.models import SyncRun, Trigger, User

    subs = [f"user-{index}" for index in random.sample(range(users), min(sample, users))]
    user_ids = [str(pk) for pk in User.objects.filter(sub__in=subs).values_list("pk", flat=True)]
    run = SyncRun.objects.create(
        scope=SyncRun.Scope.ALL,
        trigger=Trigger.PERIODIC,
        task_id="bench-explain",
        status=SyncRun.Status.RUNNING,
        revoke_budget=users,
    )
    with CaptureQueriesContext(connection) as captured:
        sync_run_batch(
            run_id=run.pk, user_ids=user_ids, trigger=Trigger.PERIODIC, task_id="bench-explain"
        )
    SyncRun.objects.filter(pk=run.pk).delete()
    return [query["sql"] for query in captured.captured_queries]


def fan_out_query() -> str:
    """The fan-out's one query: the ids of the users a full run covers, streamed."""
    from core.selectors import users_due_for_full_resync

    sql, params = users_due_for_full_resync().query.sql_with_params()
    return connection.ops.compose_sql(sql, params)
