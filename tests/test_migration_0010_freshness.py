"""Migration 0010 on PostgreSQL (freshness and the admin lists' indexes): a user whose last
sync ended ok had their rights confirmed when it finished; any other status leaves it unset.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.support.migrations import migrate, migrate_to_latest

BEFORE = [("core", "0009_change_signals")]
AFTER = [("core", "0010_freshness_and_admin_list_indexes")]


@pytest.mark.django_db(transaction=True)
def test_the_last_ok_sync_is_the_last_confirmation():
    finished = timezone.now() - timedelta(hours=2)
    apps = migrate(BEFORE)
    User = apps.get_model("core", "User")
    State = apps.get_model("core", "EntitlementSyncState")
    ok, failing = (User.objects.create(email=f"{name}@example.org") for name in ("ok", "failing"))
    State.objects.create(user=ok, status="ok", finished_at=finished)
    State.objects.create(user=failing, status="unavailable", finished_at=finished)
    try:
        apps = migrate(AFTER)
        State = apps.get_model("core", "EntitlementSyncState")
        confirmed = dict(State.objects.values_list("user__email", "rights_confirmed_at"))
    finally:
        migrate_to_latest()

    assert confirmed == {"ok@example.org": finished, "failing@example.org": None}
