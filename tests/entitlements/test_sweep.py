"""core/entitlements/sweep.py: what beat's sweep does every minute, in its order: a run whose
batches were lost is closed first (so that the next run may go ahead), then every recorded
request no sync served is sent."""

from datetime import timedelta

from django.utils import timezone

from core.entitlements.sweep import sweep
from core.models import EntitlementSyncState, SyncRun


def test_the_sweep_closes_a_lost_run_and_sends_the_unserved_request(
    transactional_db, make_user, broker_queues, settings
):
    settings.ENTITLEMENTS_RUN_STALL_SECONDS = 600
    settings.ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS = 120
    now = timezone.now()
    lost = SyncRun.objects.create(trigger="periodic", progressed_at=now - timedelta(seconds=700))
    alive = SyncRun.objects.create(trigger="admin", progressed_at=now - timedelta(seconds=30))
    waiting = EntitlementSyncState.objects.create(
        user=make_user(), requested_at=now - timedelta(seconds=300), last_trigger="login"
    )

    sent = sweep()

    lost.refresh_from_db()
    alive.refresh_from_db()
    assert (lost.status, lost.error_code) == ("failed", "incomplete")
    assert lost.finished_at is not None
    assert alive.status == "running", "a run whose batches still report goes on"
    assert sent == 1
    assert [m["args"] for m in broker_queues.messages("interactive")] == [
        [str(waiting.user_id), "login"]
    ]


def test_a_quiet_sweep_changes_nothing(transactional_db, broker_queues):
    assert sweep() == 0
    assert broker_queues.messages("interactive") == []
    assert not SyncRun.objects.exists()
