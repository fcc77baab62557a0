"""The operator's pages at a million users, proved by their SQL, not by timing (the times are
bench/'s: `python -m bench admin-pages`): no full COUNT(*) per page, an estimated total when
unfiltered, an index under every list filter, a run's curve counted in the database."""

import re

import pytest
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core import selectors
from core.models import EntitlementSyncState, SyncRun, User
from tests.factories import SyncRunFactory

pytestmark = pytest.mark.usefixtures("fast_password_hasher")

LISTS = {
    "users": (User, reverse("admin:core_user_changelist")),
    "sync states": (EntitlementSyncState, reverse("admin:core_entitlementsyncstate_changelist")),
}


def _counts(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if re.search(r"\bCOUNT\(", q["sql"])]


@pytest.fixture
def analysed(make_synced_admins, monkeypatch):
    """40 admins, the tables analysed so the planner knows their size, and the estimate used
    from any size (it is used from 100,000 rows in production)."""
    make_synced_admins(40)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {User._meta.db_table}, {EntitlementSyncState._meta.db_table}")
    monkeypatch.setattr(selectors, "_ESTIMATED_FROM_ROWS", 0)


@pytest.mark.parametrize("name", LISTS)
def test_an_unfiltered_list_is_paged_on_the_planners_estimate_without_counting(
    superuser_client, analysed, name
):
    model, url = LISTS[name]
    with CaptureQueriesContext(connection) as queries:
        page = superuser_client.get(url)

    assert page.status_code == 200
    # Neither the page's count nor the admin's "of N total" count: only the estimate.
    assert [sql for sql in _counts(queries) if model._meta.db_table in sql] == []
    assert any("reltuples" in q["sql"] for q in queries.captured_queries)


@pytest.mark.parametrize("name", LISTS)
def test_a_filtered_list_counts_once_with_its_filter(superuser_client, analysed, name):
    model, url = LISTS[name]
    status = "sync_state__status__exact" if model is User else "status__exact"
    with CaptureQueriesContext(connection) as queries:
        page = superuser_client.get(f"{url}?{status}=ok")

    assert page.status_code == 200
    counts = [sql for sql in _counts(queries) if f'FROM "{model._meta.db_table}"' in sql]
    assert len(counts) == 1
    assert " WHERE " in counts[0]


def test_a_small_table_is_counted_exactly(superuser_client, make_synced_admins):
    make_synced_admins(3)
    with CaptureQueriesContext(connection) as queries:
        superuser_client.get(LISTS["users"][1])

    assert len([sql for sql in _counts(queries) if '"core_user"' in sql]) == 1


def _indexed_leading_columns(table: str) -> set[str]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    # An expression index (the stored siret claim's) names no column.
    return {
        c["columns"][0]
        for c in constraints.values()
        if (c["index"] or c["unique"]) and c["columns"]
    }


@pytest.mark.parametrize("model", [User, EntitlementSyncState], ids=lambda m: m.__name__)
def test_every_field_a_list_filters_on_has_an_index(db, model):
    model_admin = admin.site._registry[model]
    fields = []
    for entry in model_admin.list_filter:
        if isinstance(entry, tuple):
            fields.append(entry[0])
        elif isinstance(entry, str):
            fields.append(entry)
        elif getattr(entry, "parameter_name", "") == "error_code":
            fields.append("error_code")
    indexed = {
        model: _indexed_leading_columns(model._meta.db_table),
        EntitlementSyncState: _indexed_leading_columns(EntitlementSyncState._meta.db_table),
    }
    for path in fields:
        target = model
        *relations, column = path.split("__")
        for relation in relations:
            target = target._meta.get_field(relation).related_model
        assert target._meta.get_field(column).column in indexed[target], path


def test_a_run_page_counts_its_curve_in_the_database(superuser_client, make_synced_admins):
    make_synced_admins(30)
    EntitlementSyncState.objects.update(last_trigger="periodic", finished_at=None)
    run = SyncRunFactory(users_enqueued=30, users_done=30)
    EntitlementSyncState.objects.update(finished_at=run.started_at)
    SyncRun.objects.filter(pk=run.pk).update(finished_at=run.started_at)

    with CaptureQueriesContext(connection) as queries:
        page = superuser_client.get(reverse("admin:core_syncrun_change", args=[run.pk]))

    assert page.status_code == 200
    assert "30 users" in page.content.decode()
    state_reads = [
        q["sql"]
        for q in queries.captured_queries
        if '"core_entitlementsyncstate"' in q["sql"] and "finished_at" in q["sql"]
    ]
    assert state_reads and all("GROUP BY" in sql for sql in state_reads)
