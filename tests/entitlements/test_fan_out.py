"""core/entitlements/fan_out.py: a run starts under its scope's lock and sends its users as
batches on the broker (the test Redis), streamed; a run that cannot send them all fails."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from core.entitlements import run_resync, runs
from core.entitlements.fan_out import fan_out
from core.entitlements.runs import start_run
from core.locks import run_lock
from core.models import SyncRun, Trigger
from tests.factories import MailDomainAccessFactory, MailDomainFactory, UserFactory
from tests.support.broker import producer_app


def _batches(broker_queues) -> list[list]:
    return [
        m["args"]
        for m in broker_queues.messages("bulk")
        if m["task"] == "entitlements.sync_users_batch"
    ]


def test_a_full_run_sends_its_users_in_batches_of_the_batch_size(db, broker_queues, settings):
    settings.ENTITLEMENTS_SYNC_BATCH_SIZE = 2
    users = {str(UserFactory().pk) for _ in range(5)}  # never synced: all due
    progress = []

    result = run_resync(trigger=Trigger.PERIODIC, task_id="fan-1", on_progress=progress.append)

    run = SyncRun.objects.get()
    assert result == {
        "run_id": run.pk,
        "scope": "all",
        "run_status": "running",
        "users_enqueued": 5,
    }
    batches = _batches(broker_queues)
    assert [len(ids) for ids, _run_id, _trigger in batches] == [2, 2, 1]
    assert {user_id for ids, _, _ in batches for user_id in ids} == users
    assert {(run_id, trigger) for _, run_id, trigger in batches} == {(run.pk, "periodic")}
    assert (run.status, run.users_enqueued, run.task_id) == ("running", 5, "fan-1")
    assert progress[0] == {"run_id": run.pk, "users_enqueued": 2}


def test_each_batch_expires_after_one_resync_interval(db, broker_queues, settings):
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 900
    UserFactory()

    before = timezone.now()
    run_resync(trigger=Trigger.ADMIN, task_id="fan-2")
    after = timezone.now()

    [message] = broker_queues.messages("bulk")
    interval = timedelta(seconds=900)
    assert before + interval <= datetime.fromisoformat(message["expires"]) <= after + interval


def test_a_domain_run_covers_the_domains_admins_only(db, broker_queues):
    maildomain = MailDomainFactory(name="d.example.org")
    admin = MailDomainAccessFactory(maildomain=maildomain).user
    MailDomainAccessFactory()

    result = run_resync(trigger=Trigger.COMMAND, task_id="fan-3", maildomain_id=str(maildomain.pk))

    run = SyncRun.objects.get()
    assert (result["scope"], run.maildomain_name, run.users_enqueued) == (
        "domain",
        "d.example.org",
        1,
    )
    assert [ids for ids, _, _ in _batches(broker_queues)] == [[str(admin.pk)]]


def test_an_unknown_domain_starts_no_run(db, broker_queues):
    result = run_resync(
        trigger=Trigger.ADMIN, task_id="fan-4", maildomain_id="00000000-0000-0000-0000-000000000000"
    )

    assert result == {"run_status": "skipped", "reason": "unknown_domain"}
    assert not SyncRun.objects.exists()
    assert broker_queues.length("bulk") == 0


def test_a_run_of_the_same_scope_in_progress_skips_the_new_one(db, broker_queues):
    UserFactory()
    start_run(scope=SyncRun.Scope.ALL, trigger=Trigger.PERIODIC, task_id="first")

    result = run_resync(trigger=Trigger.PERIODIC, task_id="second")

    assert (result["run_status"], result["users_enqueued"]) == ("skipped", 0)
    assert broker_queues.length("bulk") == 0


def test_a_run_with_nobody_to_sync_is_done_at_once(db, broker_queues):
    result = run_resync(trigger=Trigger.PERIODIC, task_id="fan-5")

    assert (result["run_status"], result["users_enqueued"]) == ("done", 0)
    assert SyncRun.objects.get().finished_at is not None


def test_a_fan_out_the_broker_refuses_fails_the_run_and_raises(db, private_redis):
    users = [UserFactory().pk for _ in range(3)]
    run = start_run(scope=SyncRun.Scope.ALL, trigger=Trigger.PERIODIC, task_id="fan-6")

    # The private Redis is never started: the broker is down.
    with producer_app(private_redis.url), pytest.raises(OperationalError):
        fan_out(run=run, user_ids=iter(users), trigger=Trigger.PERIODIC)

    run.refresh_from_db()
    assert (run.status, run.error_code, run.users_enqueued) == ("failed", "fanout_failed", 0)


def test_a_fan_out_delivered_again_after_it_was_cut_short_replaces_its_run(
    db, broker_queues, settings, caplog
):
    """Its first delivery was killed before writing its total (a lost worker or broker
    connection): it left its run running and its lock held, under its task id."""
    settings.ENTITLEMENTS_SYNC_BATCH_SIZE = 2
    users = {str(UserFactory().pk) for _ in range(3)}
    cut_short = start_run(scope=SyncRun.Scope.ALL, trigger=Trigger.PERIODIC, task_id="fan-7")
    assert run_lock(scope_key="all", owner="fan-7").acquire()

    result = run_resync(trigger=Trigger.PERIODIC, task_id="fan-7")

    cut_short.refresh_from_db()
    assert (cut_short.status, cut_short.error_code) == ("failed", "fanout_interrupted")
    assert runs.stopped_asking(run_id=cut_short.pk)
    run = SyncRun.objects.exclude(pk=cut_short.pk).get()
    assert (run.status, run.task_id, run.users_enqueued) == ("running", "fan-7", 3)
    assert result["run_id"] == run.pk
    assert {user_id for ids, _, _ in _batches(broker_queues) for user_id in ids} == users
    assert f"resync run {cut_short.pk} closed as failed/fanout_interrupted" in caplog.text


def test_a_fan_out_delivered_again_after_it_sent_everything_sends_nothing_more(db, broker_queues):
    """Killed after it wrote its total (e.g. while reporting its result): the copy reports the
    run it fanned out."""
    UserFactory()
    run_resync(trigger=Trigger.PERIODIC, task_id="fan-8")
    sent = broker_queues.length("bulk")
    [run] = SyncRun.objects.all()
    assert run_lock(scope_key="all", owner="fan-8").acquire()  # the killed one's lock

    result = run_resync(trigger=Trigger.PERIODIC, task_id="fan-8")

    assert result == {
        "run_id": run.pk,
        "scope": "all",
        "run_status": "running",
        "users_enqueued": 1,
    }
    assert SyncRun.objects.count() == 1
    assert broker_queues.length("bulk") == sent


def test_another_tasks_fan_out_in_progress_is_not_taken_over(db, broker_queues):
    UserFactory()
    start_run(scope=SyncRun.Scope.ALL, trigger=Trigger.PERIODIC, task_id="fan-9")
    assert run_lock(scope_key="all", owner="fan-9").acquire()

    result = run_resync(trigger=Trigger.PERIODIC, task_id="fan-10")

    assert result["run_status"] == "skipped"
    assert SyncRun.objects.get(task_id="fan-9").status == "running"
    assert broker_queues.length("bulk") == 0


def test_a_run_of_the_same_task_id_older_than_one_interval_is_not_taken_over(
    db, broker_queues, settings
):
    """Looked for in the last interval only (runs are kept for ever): an older one was
    closed by close_lost_runs, and the copy starts a run of its own."""
    settings.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = 900
    UserFactory()
    old = start_run(scope=SyncRun.Scope.ALL, trigger=Trigger.PERIODIC, task_id="fan-11")
    SyncRun.objects.filter(pk=old.pk).update(
        users_enqueued=1, started_at=timezone.now() - timedelta(seconds=901)
    )

    result = run_resync(trigger=Trigger.PERIODIC, task_id="fan-11")

    assert result["run_id"] != old.pk
    assert (result["run_status"], result["users_enqueued"]) == ("running", 1)
