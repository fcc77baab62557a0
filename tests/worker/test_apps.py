"""worker/apps.py: a worker process keeps its database connection from one task to the next,
as Django keeps a connection between requests (CELERY_DB_REUSE_MAX and the task signals)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery
from django.conf import settings
from django.db import connection

from core.task_names import TaskName

REPO = Path(__file__).resolve().parents[2]


def _sessions() -> int:
    """Connections ever opened to the test database (PostgreSQL's own count)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


@pytest.mark.long
@pytest.mark.broker
def test_a_worker_reuses_its_database_connection_across_tasks(transactional_db, private_redis):
    private_redis.start()
    database = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/"
        f"{database['NAME']}",
        "REDIS_URL": private_redis.url,
    }
    app = Celery("producer", broker=private_redis.url, set_as_current=False)
    # The worker's broker key prefix (CELERY_BROKER_KEY_PREFIX), or the ping never reaches it.
    app.conf.broker_transport_options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    with subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "messages", "worker", "--concurrency=1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as worker:
        try:
            # The first task opens the pool child's connection.
            app.send_task(TaskName.SWEEP_PENDING_SYNCS, queue="interactive")
            deadline = time.monotonic() + 30
            while not app.control.ping(timeout=0.5):
                assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(2)
            before = _sessions()
            for _ in range(8):
                app.send_task(TaskName.SWEEP_PENDING_SYNCS, queue="interactive")
            time.sleep(4)
            # Reopened per task, it would be 8 more sessions (several per task with a results
            # backend write); kept, none.
            assert _sessions() - before <= 1
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            app.close()
