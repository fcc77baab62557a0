"""Loaded into the benchmark's worker processes (`celery worker -I bench.probe`), never in prod.

It adds the no-op task of the throughput baseline, and measures the peak RSS of the process
running the fan-out task while that task runs, which only the process itself can tell apart
from the batches it runs before and after.
"""

import os
import threading

import psutil
import redis
from celery import shared_task
from celery.signals import task_postrun, task_prerun

NOOP_TASK = "bench.noop"
FANOUT_TASK = "entitlements.sync_all_admins"
# The fan-out's peak RSS in bytes, one hash field per task id, on the benchmark's Redis.
FANOUT_RSS_KEY = "bench:fanout_peak_rss"
_SAMPLE_SECONDS = 0.02

_sampling: dict[str, threading.Event] = {}


@shared_task(name=NOOP_TASK)
def noop() -> None:
    """Do nothing: what remains is the cost of Celery, the broker and the result backend."""


@task_prerun.connect
def _start_sampling(task_id=None, task=None, **kwargs) -> None:
    if task is None or task.name != FANOUT_TASK:
        return
    stop = threading.Event()
    _sampling[task_id] = stop
    threading.Thread(target=_sample, args=(task_id, stop), daemon=True).start()


@task_postrun.connect
def _stop_sampling(task_id=None, **kwargs) -> None:
    stop = _sampling.pop(task_id, None)
    if stop is not None:
        stop.set()


def _sample(task_id: str, stop: threading.Event) -> None:
    process = psutil.Process(os.getpid())
    peak = process.memory_info().rss
    while not stop.wait(_SAMPLE_SECONDS):
        peak = max(peak, process.memory_info().rss)
    peak = max(peak, process.memory_info().rss)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    client.hset(FANOUT_RSS_KEY, task_id, peak)
    client.close()
