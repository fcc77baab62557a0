"""Real `celery -A messages worker` subprocesses, configured like production through the
environment, that a test may stop, kill whole, or whose pool child it may kill."""

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from django.conf import settings
from django.db import connection

BASE_DIR = Path(__file__).resolve().parents[2]
# Only for the workers the tests start: never a real secret.
_TEST_SECRET_KEY = "faults-tests-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"
_PR_SET_PDEATHSIG = 1
# Looked up once here: the forked child must not load libraries before it execs.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _stop_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies (Linux), so a crashed
    or interrupted test run leaves no worker consuming the suite's queues."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_environment(*, redis_url: str, data_dir, **variables) -> dict[str, str]:
    """The environment of a worker sharing this test's world: pytest-django's test database,
    `redis_url` as cache and broker, the running test's cache key prefix (so locks, the
    breaker and the answer cache are the ones the test sees), and the entitlements backend
    the test configured. `variables` add or override settings (values turned into text)."""
    database = connection.settings_dict
    credentials = database["USER"] + (f":{database['PASSWORD']}" if database["PASSWORD"] else "")
    environment = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{credentials}@{database['HOST'] or '127.0.0.1'}:"
            f"{database['PORT'] or 5432}/{database['NAME']}"
        ),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
        "DATA_DIR": str(data_dir),
        "DJANGO_SECRET_KEY": _TEST_SECRET_KEY,
        "ENTITLEMENTS_BACKEND": settings.ENTITLEMENTS_BACKEND,
        "ENTITLEMENTS_BACKEND_PARAMETERS": json.dumps(settings.ENTITLEMENTS_BACKEND_PARAMETERS),
    }
    environment.update({name: str(value) for name, value in variables.items()})
    return environment


class WorkerProcess:
    """One `celery -A messages worker` (prefork) in its own process group, logging to a file."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        log_path: Path,
        name: str = "worker",
        concurrency: int = 1,
        queues: tuple[str, ...] | None = None,
        loglevel: str = "INFO",
    ):
        self.env = env
        self.log_path = Path(log_path)
        self.name = name
        self.concurrency = concurrency
        # Imported here, not at module level: bench.services imports this package before
        # Django is set up, and worker.queues needs it. Default: both queues.
        from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE

        self.queues = queues or (INTERACTIVE_QUEUE, BULK_QUEUE)
        self.loglevel = loglevel
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self._stopping_children: list[psutil.Process] | None = None

    def start(self, *, timeout: float = 90.0) -> "WorkerProcess":
        """Start the worker and wait for its "ready." line (it then consumes its queues)."""
        return self.launch().wait_ready(timeout=timeout)

    def launch(self) -> "WorkerProcess":
        """Start the worker without waiting (several can start together), see `wait_ready`."""
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "messages",
                "worker",
                f"--loglevel={self.loglevel}",
                "--pool=prefork",
                f"--concurrency={self.concurrency}",
                f"--queues={','.join(self.queues)}",
                f"--hostname={self.name}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=BASE_DIR,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Its own process group: `kill` takes the main process and its pool together, like
            # a lost machine, without touching the test process.
            start_new_session=True,
            preexec_fn=_stop_with_parent,
        )
        return self

    def wait_ready(self, *, timeout: float = 90.0) -> "WorkerProcess":
        """Wait for the worker's "ready." line."""
        deadline = time.monotonic() + timeout
        marker = f"{self.name}@"
        while not any(marker in line and "ready." in line for line in self.log().splitlines()):
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited at start-up:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} not ready:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        """The main process's id (also its process group's)."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the main process still runs."""
        return self.process is not None and self.process.poll() is None

    def pool_children(self) -> list[psutil.Process]:
        """The pool's child processes (each runs one task at a time)."""
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def kill_pool_child(self) -> int:
        """SIGKILL the pool child (concurrency 1: the one running the task); return its pid."""
        [child] = self.pool_children()
        os.kill(child.pid, signal.SIGKILL)
        return child.pid

    def wait_for_pool(self, *, timeout: float = 30.0) -> None:
        """Wait until the pool has all its children again (after one was killed)."""
        deadline = time.monotonic() + timeout
        while len([c for c in self.pool_children() if c.is_running()]) < self.concurrency:
            assert time.monotonic() < deadline, f"worker {self.name}: pool not refilled"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole worker, main process and pool: a lost machine."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_log()

    def begin_stop(self) -> None:
        """Ask for a warm shutdown without waiting (several workers can stop together)."""
        if self.alive() and self._stopping_children is None:
            self._stopping_children = self.pool_children()
            self.process.terminate()

    def stop(self, *, timeout: float = 30.0) -> None:
        """Warm shutdown: SIGTERM to the main process only (a group signal can hang billiard);
        SIGKILL the group if it does not exit in time."""
        self.begin_stop()
        if self._stopping_children is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            # A pool child still there once its main process is gone would run on, orphaned.
            for child in self._stopping_children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        self._stopping_children = None
        self._close_log()

    def log(self) -> str:
        """Everything the worker wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
