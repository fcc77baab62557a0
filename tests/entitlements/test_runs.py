"""core/entitlements/runs.py: the rules of a SyncRun row: when a run may start, how its batches
count, when it ends (exactly once), and a configuration error that stops it."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from core.entitlements import runs
from core.entitlements.results import RunCategory
from core.entitlements.runs import BatchTally
from core.models import CountedBatch, MailDomainAccess, SyncRun, Trigger
from tests.factories import MailDomainAccessFactory

ALL = SyncRun.Scope.ALL


def _start(**options) -> SyncRun:
    return runs.start_run(
        scope=options.pop("scope", ALL), trigger=Trigger.PERIODIC, task_id="t", **options
    )


def _tally(**counts) -> BatchTally:
    tally = BatchTally()
    for category, count in counts.items():
        for _ in range(count):
            tally.count(RunCategory(category))
    return tally


def test_a_run_starts_running_with_its_revocation_budget_counted_at_start(db, settings):
    settings.ENTITLEMENTS_MAX_REVOKE_SHARE, settings.ENTITLEMENTS_MAX_REVOKE_MIN = 0.5, 1
    for _ in range(4):
        MailDomainAccessFactory(source=MailDomainAccess.Source.ENTITLEMENTS)
    MailDomainAccessFactory(source=MailDomainAccess.Source.MANUAL)

    run = _start()

    assert (run.status, run.finished_at, run.trigger) == ("running", None, "periodic")
    assert (run.revocable_accesses, run.revoke_budget) == (4, 2)


def test_a_second_run_of_the_same_scope_is_skipped_another_scope_is_not(db):
    first = _start()

    second = _start()
    domain = _start(scope=SyncRun.Scope.DOMAIN, maildomain_name="d.example.org")

    assert (second.status, second.finished_at is not None) == ("skipped", True)
    assert domain.status == "running"
    first.refresh_from_db()
    assert first.status == "running"


def test_a_run_another_process_is_starting_is_skipped(db):
    assert _start(another_is_starting=True).status == "skipped"


def test_a_run_older_than_the_batch_expiry_is_closed_as_incomplete(db, settings):
    stale = _start()
    expired = timezone.now() - timedelta(seconds=runs.batch_expiry_seconds() + 1)
    SyncRun.objects.filter(pk=stale.pk).update(started_at=expired)

    fresh = _start()

    stale.refresh_from_db()
    assert (stale.status, stale.error_code) == ("failed", "incomplete")
    assert fresh.status == "running"


def test_batches_expire_after_one_resync_interval(settings):
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 1234

    assert runs.batch_expiry_seconds() == 1234


def test_a_tally_counts_each_outcome_and_gives_up_its_retries_as_failed():
    tally = _tally(done=2, changed=1, failed=1, skipped=3)
    tally.retry_user_ids += ["u1", "u2"]
    assert tally.as_dict() == {
        "done": 3,
        "changed": 1,
        "failed": 1,
        "skipped": 3,
        "not_run": 0,
        "retrying": 2,
    }

    tally.give_up_retries()

    assert tally.as_dict() == {
        "done": 3,
        "changed": 1,
        "failed": 3,
        "skipped": 3,
        "not_run": 0,
        "retrying": 0,
    }


def test_the_run_ends_with_the_batch_that_counts_its_last_user(db):
    run = _start()
    runs.record_fan_out(run_id=run.pk, users_enqueued=5)

    runs.record_batch(run_id=run.pk, tally=_tally(done=2, changed=1), delivery="batch-1:0")
    run.refresh_from_db()
    assert (run.status, run.users_done, run.users_changed) == ("running", 3, 1)

    runs.record_batch(run_id=run.pk, tally=_tally(failed=1, skipped=1), delivery="batch-2:0")
    run.refresh_from_db()
    assert (run.status, run.users_failed, run.users_skipped) == ("done", 1, 1)
    assert run.finished_at is not None


def test_batches_that_finish_before_the_fan_out_is_written_end_the_run_at_the_fan_out(db):
    run = _start()
    runs.record_batch(run_id=run.pk, tally=_tally(done=2), delivery="batch-3:0")
    run.refresh_from_db()
    # No total yet: a batch never mistakes its own count for the run's.
    assert run.status == "running"

    runs.record_fan_out(run_id=run.pk, users_enqueued=2)

    run.refresh_from_db()
    assert run.status == "done"


def test_a_batch_delivered_again_counts_once_and_its_next_try_counts_too(db):
    run = _start()
    runs.record_fan_out(run_id=run.pk, users_enqueued=4)

    runs.record_batch(run_id=run.pk, tally=_tally(done=2), delivery="lost-ack:0")
    # Its acknowledgement was lost with the broker: the broker delivers it again, it runs again.
    runs.record_batch(run_id=run.pk, tally=_tally(done=2), delivery="lost-ack:0")
    run.refresh_from_db()
    assert (run.status, run.users_done) == ("running", 2)

    # The same task's retry is another try: its users count.
    runs.record_batch(run_id=run.pk, tally=_tally(done=2), delivery="lost-ack:1")
    run.refresh_from_db()
    assert (run.status, run.users_done) == ("done", 4)


def test_a_batch_of_a_run_that_is_gone_counts_nothing_and_does_not_fail(db, caplog):
    run = _start()
    run.delete()

    with caplog.at_level(logging.INFO, logger="core.entitlements.runs"):
        runs.record_batch(run_id=run.pk, tally=_tally(done=2), delivery="orphan:0")

    assert not CountedBatch.objects.exists()
    assert "batch orphan:0 not counted: counted already (delivered again), or run gone" in (
        caplog.text
    )


def test_a_new_run_forgets_the_counted_batches_no_batch_can_come_back_for(db, settings):
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 3600
    old, recent = _start(), _start(scope=SyncRun.Scope.DOMAIN)
    running = _start(scope=SyncRun.Scope.ORGANISATION)
    assert {run.status for run in (old, recent, running)} == {"running"}
    for run in (old, recent, running):
        runs.record_batch(run_id=run.pk, tally=_tally(done=1), delivery=f"batch-of-{run.pk}:0")
    now = timezone.now()
    # `old` ended longer than a batch's expiry ago: its batches' messages are dropped unrun.
    SyncRun.objects.filter(pk=old.pk).update(
        status="done", finished_at=now - timedelta(seconds=3601)
    )
    SyncRun.objects.filter(pk=recent.pk).update(
        status="done", finished_at=now - timedelta(seconds=3500)
    )

    _start(scope=SyncRun.Scope.DOMAIN, maildomain_name="other.example")

    assert set(CountedBatch.objects.values_list("run_id", flat=True)) == {recent.pk, running.pk}
    SyncRun.objects.filter(pk__in=[recent.pk, running.pk]).update(
        status="done", finished_at=now - timedelta(seconds=7200)
    )
    assert runs.forget_counted_batches() == 2
    assert not CountedBatch.objects.exists()


def test_a_run_ends_exactly_once(db):
    run = _start()
    runs.record_fan_out(run_id=run.pk, users_enqueued=1)
    runs.record_batch(run_id=run.pk, tally=_tally(done=1), delivery="batch-4:0")

    assert runs.finish_if_complete(run_id=run.pk) is False


def test_a_run_with_nobody_is_done_at_its_fan_out(db):
    run = _start()

    runs.record_fan_out(run_id=run.pk, users_enqueued=0)

    run.refresh_from_db()
    assert (run.status, run.users_enqueued) == ("done", 0)


def test_a_fan_out_that_failed_fails_the_run(db):
    run = _start()

    runs.record_fan_out_failed(run_id=run.pk, users_enqueued=200)

    run.refresh_from_db()
    assert (run.status, run.error_code, run.users_enqueued) == ("failed", "fanout_failed", 200)


def test_a_configuration_error_stops_the_run_once_with_one_error(db, caplog):
    run = _start()
    assert runs.stopped_asking(run_id=run.pk) is False

    first = runs.stop_run_on_configuration_error(run_id=run.pk, error_code="http_401")
    second = runs.stop_run_on_configuration_error(run_id=run.pk, error_code="http_401")

    assert (first, second) == (True, False)
    assert runs.stopped_asking(run_id=run.pk) is True
    run.refresh_from_db()
    assert (run.status, run.error_code) == ("failed", "configuration")
    stopped = [
        r for r in caplog.records if r.levelno == logging.ERROR and "stopped" in r.getMessage()
    ]
    assert [r.getMessage().split(":")[0] for r in stopped] == [f"resync run {run.pk} stopped"]


@pytest.mark.parametrize("status", ["done", "skipped"])
def test_a_run_that_already_ended_is_not_stopped(db, status):
    run = _start()
    SyncRun.objects.filter(pk=run.pk).update(status=status)

    assert runs.stop_run_on_configuration_error(run_id=run.pk, error_code="http_403") is False
    assert runs.stopped_asking(run_id=run.pk) is False
