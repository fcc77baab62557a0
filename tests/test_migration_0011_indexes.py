"""Migration 0011 on PostgreSQL: fewer index writes per sync (issue 21, a million admins).

The foreign keys' own indexes are gone where a composite index starts with the same column,
so every foreign key still leads an index (lookups and cascades by it read one); the sync
state's pages keep room, so a batch's first write of a user's row (`started_at`, which no
index covers) is a heap-only update that writes no index entry. Both undo cleanly.
"""

import pytest
from django.db import connection, transaction
from django.utils import timezone

from core.models import EntitlementSyncState
from tests.factories import UserFactory
from tests.support.migrations import migrate, migrate_to_latest

BEFORE = [("core", "0010_freshness_and_admin_list_indexes")]
TABLES = ("core_maildomainaccess", "core_accessauditentry", "core_entitlementsyncstate")


def _leading_columns(table: str) -> list[str]:
    """The first column of each index of `table`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = %s::regclass",
            [table],
        )
        return sorted(row[0] for row in cursor.fetchall())


def _foreign_key_columns(table: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT a.attname FROM pg_constraint c JOIN pg_attribute a "
            "ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
            "WHERE c.conrelid = %s::regclass AND c.contype = 'f'",
            [table],
        )
        return sorted(row[0] for row in cursor.fetchall())


def _fillfactor() -> list[str] | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [TABLES[2]])
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_every_foreign_key_still_leads_an_index_with_fewer_indexes():
    try:
        migrate(BEFORE)
        before = {table: _leading_columns(table) for table in TABLES}
        assert _fillfactor() is None
    finally:
        migrate_to_latest()
    after = {table: _leading_columns(table) for table in TABLES}

    assert len(after["core_maildomainaccess"]) == len(before["core_maildomainaccess"]) - 2
    assert len(after["core_accessauditentry"]) == len(before["core_accessauditentry"]) - 1
    for table in TABLES:
        assert set(_foreign_key_columns(table)) <= set(after[table]), table
    assert _fillfactor() == ["fillfactor=70"]


@pytest.mark.django_db(transaction=True)
def test_a_batch_start_write_is_a_heap_only_update():
    users = UserFactory.create_batch(20)
    EntitlementSyncState.objects.bulk_create(
        [EntitlementSyncState(user=user, status=EntitlementSyncState.Status.OK) for user in users]
    )
    with transaction.atomic(), connection.cursor() as cursor:
        # How sync.load_users_starting_sync marks a batch's users started.
        started = EntitlementSyncState.objects.filter(user__in=users).update(
            started_at=timezone.now()
        )
        # This transaction's own count: no wait for the statistics collector.
        cursor.execute(
            "SELECT pg_stat_get_xact_tuples_updated(%s::regclass), "
            "pg_stat_get_xact_tuples_hot_updated(%s::regclass)",
            [TABLES[2], TABLES[2]],
        )
        updated, heap_only = cursor.fetchone()

    assert started == updated == 20
    assert heap_only == 20
