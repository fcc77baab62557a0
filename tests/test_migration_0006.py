"""Migration 0006 on PostgreSQL: a run flagged at its revocation budget keeps its flag under
the flag's new name, `budget_reached`."""

import pytest

from tests.support.migrations import migrate, migrate_to_latest

BEFORE = [("core", "0005_manual_trigger")]
AFTER = [("core", "0006_syncrun_budget_reached")]


@pytest.mark.django_db(transaction=True)
def test_a_run_that_reached_its_budget_keeps_its_flag():
    apps = migrate(BEFORE)
    Run = apps.get_model("core", "SyncRun")
    held = Run.objects.create(trigger="periodic", revocations_held=True).pk
    clear = Run.objects.create(trigger="periodic").pk
    try:
        apps = migrate(AFTER)
        Run = apps.get_model("core", "SyncRun")
        flags = dict(Run.objects.values_list("pk", "budget_reached"))
    finally:
        migrate_to_latest()

    assert flags == {held: True, clear: False}
