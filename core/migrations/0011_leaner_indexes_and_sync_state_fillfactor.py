import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

# Per cent of each page a new sync state row may fill: the rest is room for the row's next
# version on the same page.
SYNC_STATE_FILLFACTOR = 70


def set_sync_state_fillfactor(apps, schema_editor, *, fillfactor: int | None = None):
    """On PostgreSQL, leave room in the sync state's pages (rows written from now on).

    A batch writes each of its users' state rows twice: at its start (`started_at` only,
    which no index covers) and at its end. With room on the row's page, the first write is a
    heap-only update that touches none of the table's seven indexes; on a full page (the
    default fill of 100 %) every write adds an entry to each, and at a million users those
    are the writes that cost PostgreSQL more per user than at ten thousand.
    """
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name("core_entitlementsyncstate")
    if fillfactor is None:
        schema_editor.execute(f"ALTER TABLE {table} RESET (fillfactor)")
    else:
        schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {int(fillfactor)})")


def leave_room(apps, schema_editor):
    set_sync_state_fillfactor(apps, schema_editor, fillfactor=SYNC_STATE_FILLFACTOR)


def fill_pages(apps, schema_editor):
    set_sync_state_fillfactor(apps, schema_editor, fillfactor=None)


class Migration(migrations.Migration):
    """Fewer index writes per sync, which cost more as the tables grow (issue 21, a million
    admins): the foreign keys' own indexes go where a composite index already starts with
    the same column, and the sync state's pages keep room for heap-only updates."""

    dependencies = [
        ("core", "0010_freshness_and_admin_list_indexes"),
    ]

    operations = [
        migrations.AlterField(
            model_name="accessauditentry",
            name="user",
            field=models.ForeignKey(
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="access_audit_entries",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="maildomainaccess",
            name="maildomain",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="accesses",
                to="core.maildomain",
            ),
        ),
        migrations.AlterField(
            model_name="maildomainaccess",
            name="user",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="maildomain_accesses",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(leave_room, fill_pages, elidable=False),
    ]
