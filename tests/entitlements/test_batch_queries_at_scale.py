"""A run's batch at a million users, proved by its plans, not by timing (the times are
bench/'s: `python -m bench.million`, docs/performance.md figure 11): every statement a batch
sends reads its own users' rows through an index, never a whole table, so its cost does not
grow with the tables.

The tables hold 10,000 other admins (loaded in SQL, in a second or two), enough for the planner to
choose as it does at a million: on a few rows it rightly reads whole tables.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core.entitlements import sync_run_batch
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, SyncRun
from tests.conftest import ALPHA, BETA
from tests.factories import SyncRunFactory
from tests.support.query_plans import explain, explainable, table_rows, whole_table_scans

OTHER_ADMINS = 10_000


@pytest.fixture
def other_admins(domains):
    """OTHER_ADMINS admins of alpha with their sync states, as a run leaves them; analysed."""
    alpha = MailDomain.objects.get(name=ALPHA)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO core_user (id, password, is_superuser, created_at, updated_at, sub, "
            "email, full_name, is_staff, is_active) SELECT gen_random_uuid(), '!', false, "
            "now(), now(), 'other-' || g, 'other-' || g || '@example.org', '', false, true "
            "FROM generate_series(1, %s) g",
            [OTHER_ADMINS],
        )
        cursor.execute(
            "INSERT INTO core_maildomainaccess (id, created_at, updated_at, maildomain_id, "
            "user_id, role, source) SELECT gen_random_uuid(), now(), now(), %s, id, 'admin', "
            "'entitlements' FROM core_user WHERE sub LIKE 'other-%%'",
            [alpha.pk],
        )
        cursor.execute(
            "INSERT INTO core_entitlementsyncstate (user_id, forwarded_claims, status, "
            "error_code, finished_at, entitled_domains, answer_fingerprint, upstream_identity, "
            "last_trigger, last_task_id, rights_confirmed_at) SELECT id, '{}', 'ok', '', now(), "
            "%s::jsonb, '', '', 'periodic', '', now() FROM core_user WHERE sub LIKE 'other-%%'",
            [f'["{ALPHA}"]'],
        )
        cursor.execute("ANALYZE core_user, core_maildomainaccess, core_entitlementsyncstate")


@pytest.fixture
def batch_statements(other_admins, make_synced_admins, scripted_upstream) -> list[str]:
    """Every statement of one batch whose users meet every path of a run: four change (one
    domain granted, one revoked), one keeps its rights, one's upstream is unavailable."""
    users = make_synced_admins(6)
    scripted_upstream(
        admins_by_email={user.email: [BETA] for user in users[:4]} | {users[4].email: [ALPHA]},
        unavailable_emails=[users[5].email],
    )
    run = SyncRunFactory(status=SyncRun.Status.RUNNING, users_enqueued=6, revoke_budget=1000)
    with CaptureQueriesContext(connection) as captured:
        tally = sync_run_batch(
            run_id=run.pk,
            user_ids=[str(user.pk) for user in users],
            trigger="periodic",
            task_id="batch-plans",
        )
    # The batch did what a run's batch does: the statements below are a real batch's.
    assert tally.as_dict()["changed"] == 4
    assert MailDomainAccess.objects.filter(maildomain__name=BETA).count() == 4
    return [query["sql"] for query in captured.captured_queries]


def test_no_statement_of_a_batch_reads_a_whole_table(batch_statements):
    planned = [sql for sql in batch_statements if explainable(sql)]
    # Reads, the upsert of the starts, inserts and deletes of accesses, the state updates
    # (one statement, its rows in one JSON parameter), the run's counts: the batch's whole path.
    kinds = {sql.split(" times: ")[-1].split()[0] for sql in planned}
    assert {"SELECT", "INSERT", "UPDATE", "DELETE"} <= kinds
    state_table = EntitlementSyncState._meta.db_table
    [_state_update] = [
        sql
        for sql in planned
        if sql.startswith(f'UPDATE "{state_table}"') and "jsonb_populate_recordset" in sql
    ]
    assert any(sql.startswith("INSERT") and "jsonb_populate_recordset" in sql for sql in planned)

    rows = table_rows()
    assert rows["core_user"] >= OTHER_ADMINS
    scans = {sql: whole_table_scans(explain(sql), rows=rows, large=OTHER_ADMINS) for sql in planned}

    assert {sql: found for sql, found in scans.items() if found} == {}


def test_a_statement_no_index_serves_is_found(other_admins):
    """The check above can fail: a filter on an unindexed column reads the whole table, and
    so does an executemany's (planned generically)."""
    table = EntitlementSyncState._meta.db_table
    unindexed = f"SELECT user_id FROM {table} WHERE last_task_id = 'batch-plans'"
    many = f"3 times: UPDATE {table} SET status = %s WHERE last_task_id = %s"

    rows = table_rows()

    assert whole_table_scans(explain(unindexed), rows=rows, large=OTHER_ADMINS) == [
        f"Seq Scan on {table}"
    ]
    assert whole_table_scans(explain(many), rows=rows, large=OTHER_ADMINS) == [
        f"Seq Scan on {table}"
    ]
