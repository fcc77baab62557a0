"""Migration 0004 on PostgreSQL: states that applied an answer get the digest of the e-mail
they were asked with, so the identity rule protects them from the first sync after the upgrade."""

import pytest

from core.entitlements.identity import upstream_identity
from tests.support.migrations import migrate, migrate_to_latest

BEFORE = [("core", "0003_sync_vocabulary")]
AFTER = [("core", "0004_identity_and_ended_access")]


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
        migrate_to_latest()

    # The digest a sync computes: the next sync with the same e-mail sees no change.
    assert identities == {synced.pk: upstream_identity("Admin@alpha.example.org"), never.pk: ""}
