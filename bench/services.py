"""The real parts a benchmark runs against: its own Redis, database, stub and worker processes.

Everything is started here as a subprocess and stopped by its own process id: a private
redis-server on a free port (broker, cache, locks and the upstream guard, so nothing else on
the machine's shared Redis disturbs the figures or is disturbed), the DeployCenter stub, and
`celery -A messages worker` processes with the project's settings read from the environment.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from urllib.request import urlopen

import psutil
import redis

from bench.layout import WorkerSpec
from bench.stub import CONTROL_PATH
from tests.deploycenter_stub import DEFAULT_API_KEY, DEFAULT_SERVICE_ID, ENDPOINT_PATH
from tests.support.redis_server import PrivateRedis as TestsPrivateRedis

REPO = Path(__file__).resolve().parent.parent
DEPLOYCENTER_BACKEND = "core.entitlements.backends.deploycenter.DeployCenterEntitlementsBackend"


class BenchSetupError(Exception):
    """A part of the benchmark could not be started; the message says which and why."""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen, *, timeout: float = 30) -> None:
    """SIGTERM the process itself (not its group: a Celery worker's main process then stops
    its pool children cleanly), SIGKILL it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class PrivateRedis(TestsPrivateRedis):
    """The benchmark's broker and cache: the tests' throwaway redis-server, started at once."""

    def __init__(self, directory: Path):
        super().__init__(directory)
        try:
            self.start()
        except (OSError, RuntimeError):
            raise BenchSetupError("redis-server did not start (is it installed?)") from None
        self.client = redis.Redis(port=self.port)

    def stop(self) -> None:
        self.client.close()
        super().stop()


class StubProcess:
    """The benchmark's DeployCenter stub (bench.stub) in its own process."""

    def __init__(self, *, log: Path):
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.stub"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.url = self.process.stdout.readline().strip()
        if not self.url.endswith(ENDPOINT_PATH):
            raise BenchSetupError(f"the DeployCenter stub did not start (see {log})")

    def control(self, **switches) -> dict:
        """Flip the stub's switches (latency in seconds, generation); returns its state."""
        parts = urlsplit(self.url)
        query = "&".join(f"{name}={value}" for name, value in switches.items())
        url = urlunsplit((parts.scheme, parts.netloc, CONTROL_PATH, query, ""))
        with urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def backend_parameters(self) -> dict:
        """ENTITLEMENTS_BACKEND_PARAMETERS for the DeployCenter backend pointed at the stub."""
        return {"base_url": self.url, "service_id": DEFAULT_SERVICE_ID, "api_key": DEFAULT_API_KEY}

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


# The token of the web the benchmark starts (not a secret: the web and workers are its own).
CHANGES_TOKEN = "benchmark-changes-token-0123456789"


class WebProcess:
    """The web as the Procfile runs it (gunicorn, messages.wsgi) on a free port."""

    def __init__(self, *, env: dict[str, str], log: Path, workers: int = 2, threads: int = 1):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "messages.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--threads",
                str(threads),
            ],
            cwd=REPO,
            env={**env, "DJANGO_SECURE_SSL_REDIRECT": "false"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self._answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise BenchSetupError(f"the web did not start (see {log})")
            time.sleep(0.2)

    def tree(self) -> list[psutil.Process]:
        """gunicorn's arbiter and its workers."""
        main = psutil.Process(self.process.pid)
        return [main, *main.children(recursive=True)]

    def _answers(self) -> bool:
        try:
            with urlopen(f"{self.url}/healthz/", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


def ensure_database(url: str) -> None:
    """Create the benchmark's database unless it exists; only a name with "bench" is accepted.

    The benchmark empties its tables at every run: a typo must not point it at real data.
    """
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if "bench" not in name:
        raise BenchSetupError(
            f"BENCH_DATABASE_URL must name a database with 'bench' in its name (got {name!r}): "
            "the benchmark empties its tables"
        )
    admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    try:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [name]
            ).fetchone()
            if not exists:
                connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        raise BenchSetupError(f"PostgreSQL at {parts.netloc} is not reachable: {error}") from None


@dataclass
class WorkerProcess:
    """A running `celery -A messages worker` subprocess."""

    spec: WorkerSpec
    process: subprocess.Popen
    log_path: Path
    _log: object = field(repr=False, default=None)

    @property
    def hostname(self) -> str:
        return f"{self.spec.name}@bench"

    def tree(self) -> list[psutil.Process]:
        """The worker's main process and its pool children."""
        main = psutil.Process(self.process.pid)
        return [main, *main.children(recursive=True)]

    def rss_bytes(self) -> int:
        """Resident memory of the whole worker: main process plus pool children."""
        total = 0
        for process in self.tree():
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def stop(self) -> None:
        stop_process(self.process)
        if self._log:
            self._log.close()


def start_worker(*, spec: WorkerSpec, env: dict[str, str], log_dir: Path) -> WorkerProcess:
    """Start a worker with the project's Celery app and settings plus the benchmark's probe."""
    log_path = log_dir / f"worker-{spec.name}.log"
    log = log_path.open("a")
    nice = ["nice", "-n", str(spec.niceness)] if spec.niceness else []
    process = subprocess.Popen(
        [
            *nice,
            sys.executable,
            "-m",
            "celery",
            "-A",
            "messages",
            "worker",
            f"--hostname={spec.name}@bench",
            f"--queues={','.join(spec.queues)}",
            f"--concurrency={spec.concurrency}",
            "--include=bench.probe",
            "--loglevel=INFO",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return WorkerProcess(spec=spec, process=process, log_path=log_path, _log=log)


def wait_for_workers(app, workers: list[WorkerProcess], *, timeout: float = 60) -> None:
    """Block until every worker answers a ping (its pool is up and consuming)."""
    wanted = {worker.hostname for worker in workers}
    deadline = time.monotonic() + timeout
    while True:
        for worker in workers:
            if worker.process.poll() is not None:
                raise BenchSetupError(f"worker {worker.hostname} exited; see {worker.log_path}")
        replies = app.control.ping(destination=sorted(wanted), timeout=1.0) or []
        answered = {name for reply in replies for name in reply}
        if wanted <= answered:
            return
        if time.monotonic() > deadline:
            raise BenchSetupError(f"workers {sorted(wanted - answered)} did not start in time")


def django_environment(
    *, database_url: str, redis_url: str, stub: StubProcess, data_dir: Path, extra: dict
) -> dict[str, str]:
    """The environment of the benchmark process and its workers: the project's settings,
    pointed at the benchmark's database, private Redis and stub."""
    env = {
        key: value
        for key, value in os.environ.items()
        # The caller's own test settings must not leak into the benchmark's.
        if not key.startswith(("ENTITLEMENTS_", "CELERY_", "DJANGO_", "DATABASE_", "REDIS_"))
    }
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "DJANGO_SETTINGS_MODULE": "messages.settings",
            "DJANGO_SECRET_KEY": "benchmark-only-not-a-secret",
            "DATA_DIR": str(data_dir),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CACHE_KEY_PREFIX": "bench",
            "ENTITLEMENTS_BACKEND": DEPLOYCENTER_BACKEND,
            "ENTITLEMENTS_BACKEND_PARAMETERS": json.dumps(stub.backend_parameters()),
            **extra,
        }
    )
    return env


def set_up_bench_process(
    *, database_url: str, redis_url: str, stub: StubProcess, scratch: Path, extra: dict
) -> dict[str, str]:
    """Make this process the benchmark's driver and return its workers' environment.

    Both share `django_environment`'s settings, with the metrics counted in files under
    `scratch` as in production (multiprocess mode). This process's environment becomes exactly
    the workers' (the caller's CELERY_BROKER_KEY_PREFIX... dropped too, or it would not find
    their queues), logging warnings only: its inline logins would flood the output; the workers
    log INFO, two lines per user sync as in production.
    """
    env = django_environment(
        database_url=database_url,
        redis_url=redis_url,
        stub=stub,
        data_dir=scratch / "data",
        extra=extra,
    )
    env["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    os.environ.clear()
    os.environ.update({**env, "LOG_LEVEL": "WARNING"})
    import django

    django.setup()
    return {**env, "LOG_LEVEL": "INFO"}


def cpu_snapshot(processes: list[psutil.Process]) -> dict[tuple[int, float], float]:
    """User plus system CPU seconds each process used so far, by (pid, start time)."""
    snapshot = {}
    for process in processes:
        try:
            times = process.cpu_times()
            snapshot[process.pid, process.create_time()] = times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return snapshot


def cpu_used(before: dict, after: dict) -> float:
    """CPU seconds used between two snapshots; a process born since counts from its start
    (one that ended meanwhile is missed)."""
    return sum(seconds - before.get(key, 0.0) for key, seconds in after.items())


def database_sessions(database: str) -> list[psutil.Process]:
    """The PostgreSQL backends serving `database` (their process title names it)."""
    return [
        process
        for process in psutil.process_iter(["name", "cmdline"])
        if process.info["name"] == "postgres"
        and f" {database} " in " ".join(process.info["cmdline"] or ())
    ]
