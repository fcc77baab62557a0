"""A run's fan-out killed before it sent every batch: a worker terminates its running tasks
when its broker connection drops (CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS),
or its pool child dies, and the fan-out task is delivered again under the same id (late acks).

Before: the copy found the run's lock still held by its killed first delivery and recorded
itself skipped; the run the first delivery left stayed running without its total until
ENTITLEMENTS_RUN_STALL_SECONDS closed it failed/incomplete, and the users it had not sent
waited for the next interval. Now the copy takes back its lock, closes that run
failed/fanout_interrupted (its batches ask no one) and starts a new run over every user.

A real worker (late acks, reject on worker lost: the killed task is delivered again at once),
PostgreSQL and the DeployCenter stub. The kill lands after the first batch was sent, while
the fan-out's progress report waits on its result row, locked by the test.
"""

import uuid
from contextlib import ExitStack

import pytest
from celery import current_app
from django.db.models import F

from core.models import SyncRun, Trigger
from core.task_names import TaskName
from tests.faults.conftest import ALPHA, BETA, synced_domains
from tests.faults.test_worker_kills import held_lock, waiting_on_lock, worker_lost_count
from tests.support import wait_until

RUN_USERS = 6
BATCH_SIZE = 2


@pytest.mark.long
def test_a_fan_out_killed_mid_way_is_replaced_by_a_run_over_every_user(
    start_worker, make_admins, upstream
):
    worker = start_worker(concurrency=1, ENTITLEMENTS_SYNC_BATCH_SIZE=BATCH_SIZE)
    users = make_admins(RUN_USERS)
    before = worker_lost_count(worker)
    task_id = f"fan-out-{uuid.uuid4().hex}"

    # The run's row waits (its INSERT) until the task's result row, written when the task
    # started, is locked: then the first batch is sent and the progress report waits on it.
    with ExitStack() as result_row_locked:
        with held_lock("LOCK TABLE core_syncrun IN SHARE ROW EXCLUSIVE MODE"):
            current_app.send_task(TaskName.SYNC_ALL_ADMINS, args=[Trigger.ADMIN], task_id=task_id)
            wait_until(
                lambda: waiting_on_lock('INSERT INTO "core_syncrun"'),
                timeout=30,
                message="the run's row to wait on the table",
            )
            result_row_locked.enter_context(
                held_lock(
                    "SELECT 1 FROM django_celery_results_taskresult WHERE task_id = %s FOR UPDATE",
                    [task_id],
                )
            )
        wait_until(
            lambda: waiting_on_lock('UPDATE "django_celery_results_taskresult"'),
            timeout=30,
            message="the fan-out's progress report to wait on its result row",
        )
        [cut_short] = SyncRun.objects.filter(task_id=task_id)
        assert (cut_short.status, cut_short.users_enqueued) == ("running", 0)
        worker.kill_pool_child()
        wait_until(lambda: worker_lost_count(worker) > before, message="the loss to be seen")
    worker.wait_for_pool()

    run = wait_until(
        lambda: SyncRun.objects.filter(task_id=task_id, status=SyncRun.Status.DONE).first(),
        timeout=30,
        message="the copy's run to end",
    )
    assert (run.users_enqueued, run.users_done, run.users_failed) == (RUN_USERS, RUN_USERS, 0)
    cut_short.refresh_from_db()
    assert (cut_short.status, cut_short.error_code) == ("failed", "fanout_interrupted")
    # Its one batch sent before the kill counts on it: synced if the worker ran it before the
    # copy closed the run (it was already reserved), else not run (it asked no one).
    counted = F("users_done") + F("users_not_run")
    wait_until(
        lambda: (
            SyncRun.objects.alias(counted=counted)
            .filter(pk=cut_short.pk, counted=BATCH_SIZE)
            .exists()
        ),
        timeout=30,
        message="the cut-short run's batch to be counted",
    )
    assert SyncRun.objects.filter(task_id=task_id).count() == 2
    assert f"resync run {cut_short.pk} closed as failed/fanout_interrupted" in worker.log()
    assert all(synced_domains(user) == {ALPHA, BETA} for user in users)
