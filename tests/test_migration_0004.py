"""Migration 0004 on PostgreSQL: states that applied an answer get the digest of the e-mail
they were asked with, so the identity rule protects them from the first sync after the upgrade."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from core.entitlements.identity import upstream_identity

BEFORE = [("core", "0003_sync_vocabulary")]
AFTER = [("core", "0004_identity_and_ended_access")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_current_emails_are_recorded_for_states_that_applied_an_answer():
    apps = migrate(BEFORE)
    User = apps.get_model("core", "User")
    State = apps.get_model("core", "EntitlementSyncState")
    synced = User.objects.create(email="Admin@alpha.example.org", sub="a", password="!")
    never = User.objects.create(email="new@alpha.example.org", sub="b", password="!")
    State.objects.create(user=synced, answer_fingerprint="f" * 64, entitled_domains=["x.org"])
    State.objects.create(user=never)
    try:
        apps = migrate(AFTER)
        State = apps.get_model("core", "EntitlementSyncState")
        identities = dict(State.objects.values_list("user_id", "upstream_identity"))
    finally:
        migrate(AFTER)

    # The digest a sync computes: the next sync with the same e-mail sees no change.
    assert identities == {synced.pk: upstream_identity("Admin@alpha.example.org"), never.pk: ""}
