"""A batch killed while it counts its users in the run: a worker terminates its running tasks
when its broker connection drops (CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS),
so a kill can land at any line of a batch, the count included.

Before: the batch marked its delivery counted (in the cache), then added its counts, then closed
the run if it was the last. Killed between the two, or before the close, its copy delivered
again found the mark and counted nothing: the run stayed running until
ENTITLEMENTS_RUN_STALL_SECONDS closed it failed/incomplete (caught by CI's RabbitMQ restart,
which waited 150 s for the run to end). The mark, the counts and the close are now one
transaction: killed inside it, nothing is counted, and the copy delivered again counts.

A real worker (late acks, reject on worker lost: the killed batch is delivered again at once),
PostgreSQL and the DeployCenter stub; the kill lands while the count waits on the run's row,
locked by the test.
"""

from core.entitlements import request_resync
from core.models import CountedBatch, SyncRun, Trigger
from tests.faults.conftest import ALPHA, BETA, synced_domains
from tests.faults.test_worker_kills import held_lock, waiting_on_lock, worker_lost_count
from tests.support import wait_until

RUN_USERS = 5


def test_a_batch_killed_while_counting_is_counted_by_its_copy_delivered_again(
    start_worker, make_admins, upstream
):
    worker = start_worker(concurrency=1)
    users = make_admins(RUN_USERS)
    # Time to lock the run's row between the fan-out's total and the batch's count.
    upstream.latency = 1.0
    before = worker_lost_count(worker)

    request_resync(trigger=Trigger.ADMIN)
    run = wait_until(
        lambda: SyncRun.objects.filter(users_enqueued=RUN_USERS).first(),
        message="the run's batch to be sent",
    )
    with held_lock("SELECT 1 FROM core_syncrun WHERE id = %s FOR UPDATE", [run.pk]):
        wait_until(
            lambda: waiting_on_lock('UPDATE "core_syncrun" SET "users_done"'),
            timeout=30,
            message="the batch's count to wait on the run's row",
        )
        worker.kill_pool_child()
        wait_until(lambda: worker_lost_count(worker) > before, message="the loss to be seen")
    worker.wait_for_pool()

    run = wait_until(
        lambda: SyncRun.objects.exclude(status=SyncRun.Status.RUNNING).filter(pk=run.pk).first(),
        timeout=30,
        message="the run to end",
    )
    assert (run.status, run.users_enqueued, run.users_done, run.users_failed) == (
        SyncRun.Status.DONE,
        RUN_USERS,
        RUN_USERS,
        0,
    )
    assert "not counted: counted already" not in worker.log()
    assert CountedBatch.objects.filter(run=run).count() == 1
    assert all(synced_domains(user) == {ALPHA, BETA} for user in users)
