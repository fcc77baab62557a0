"""Figures 4 to 6: full resync runs end to end, the no-op baseline, memory of the workers."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psutil
from django.db.models import Max
from django_celery_results.models import TaskResult

from bench.probe import FANOUT_RSS_KEY, FANOUT_TASK, NOOP_TASK
from bench.services import WorkerProcess, cpu_snapshot, cpu_used
from core.models import EntitlementSyncState, SyncRun
from worker.queues import BULK_QUEUE

MB = 1024 * 1024


class RssSampler:
    """Samples the resident memory of worker process trees in a thread; keeps the peaks."""

    def __init__(self, workers: list[WorkerProcess], *, every: float = 0.1):
        self.workers = workers
        self.every = every
        self.peaks = {worker.spec.name: 0 for worker in workers}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            for worker in self.workers:
                name = worker.spec.name
                self.peaks[name] = max(self.peaks[name], worker.rss_bytes())
            if self._stop.wait(self.every):
                return


@dataclass
class RunFigures:
    """What one full resync run did and cost."""

    users: int
    seconds: float
    done: int
    changed: int
    failed: int
    skipped: int
    worker_peak_rss: dict[str, int]
    fanout_peak_rss: int
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    machine_cpu_percent: float = 0.0

    @property
    def users_per_s(self) -> float:
        return self.users / self.seconds if self.seconds else 0.0


def full_resync(
    app,
    *,
    workers: list[WorkerProcess],
    cpu_watch: dict[str, Callable[[], list[psutil.Process]]],
    redis_client,
    during: Callable[[Callable[[], bool]], None] | None = None,
    timeout: float = 3600,
) -> RunFigures:
    """Run entitlements.sync_all_admins as beat would and wait for its last user's row.

    Timed from the task's start (its SyncRun row) to the last bookkeeping row it updated.
    `cpu_watch` lists, by part, the processes whose CPU time the run is charged.
    `during(running)` is called once the run has started, with a callable telling whether the
    run is still in progress.
    """
    cpu_before = {name: cpu_snapshot(processes()) for name, processes in cpu_watch.items()}
    psutil.cpu_percent()
    with RssSampler(workers) as sampler:
        task_id = app.send_task(FANOUT_TASK, kwargs={"trigger": "periodic"}).id
        deadline = time.monotonic() + timeout
        run = _wait_for(lambda: SyncRun.objects.filter(task_id=task_id).first(), deadline)

        def running() -> bool:
            run.refresh_from_db()
            return run.status == SyncRun.Status.RUNNING

        if during is not None:
            during(running)
        _wait_for(lambda: not running(), deadline, every=0.25)
    machine_cpu = psutil.cpu_percent()
    if run.status != SyncRun.Status.DONE:
        raise RuntimeError(f"the full resync ended {run.status} ({run.error_code})")
    last_row = EntitlementSyncState.objects.filter(
        last_trigger="periodic", finished_at__gte=run.started_at
    ).aggregate(last=Max("finished_at"))["last"]
    fanout_rss = _wait_for(lambda: redis_client.hget(FANOUT_RSS_KEY, task_id), deadline)
    return RunFigures(
        users=run.users_enqueued,
        seconds=(last_row - run.started_at).total_seconds(),
        done=run.users_done,
        changed=run.users_changed,
        failed=run.users_failed,
        skipped=run.users_skipped,
        worker_peak_rss=dict(sampler.peaks),
        fanout_peak_rss=int(fanout_rss),
        cpu_seconds={
            name: cpu_used(cpu_before[name], cpu_snapshot(processes()))
            for name, processes in cpu_watch.items()
        },
        machine_cpu_percent=machine_cpu,
    )


def noop_throughput(app, *, tasks: int, timeout: float = 600) -> float:
    """No-op tasks per second through the bulk queue, from the first send to the last result.

    The same broker, worker process, settings and result backend as the resync's batches.
    """
    TaskResult.objects.filter(task_name=NOOP_TASK).delete()
    started = datetime.now().astimezone()
    with app.producer_or_acquire() as producer:
        for _ in range(tasks):
            app.send_task(NOOP_TASK, queue=BULK_QUEUE, producer=producer)
    done = TaskResult.objects.filter(task_name=NOOP_TASK, status="SUCCESS")
    _wait_for(lambda: done.count() >= tasks, time.monotonic() + timeout, every=0.25)
    last = done.aggregate(last=Max("date_done"))["last"]
    return tasks / (last - started).total_seconds()


def _wait_for(fetch: Callable, deadline: float, *, every: float = 0.05):
    """Call `fetch` until it returns something truthy; raise past the deadline."""
    while not (value := fetch()):
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the benchmark's run")
        time.sleep(every)
    return value
