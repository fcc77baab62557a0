"""`make run`, started and stopped 30 times in a row on the embedded default: each time
`celery inspect ping` answers and Flower's worker page shows the worker, and no process logs
a broken broker file (slow: `make test-slow`)."""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from core.management.commands.setup_demo import SUPERUSER_EMAIL
from tests import figures

BASE_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STARTS = int(os.environ.get("EMBEDDED_STARTS", "30"))
# A start on the loaded 2-core machine takes 10-20 s; this only bounds a hung one.
START_TIMEOUT = 120
# What kombu's own file-system transport logged when it broke its control files.
BROKEN_BROKER_SIGNS = ("JSONDecodeError", "Unknown worker", "Extra data", "Expecting value")

_measured: list[str] = []


@figures.reporter
def _figures() -> list[str]:
    return list(_measured)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _environment(data_dir: Path) -> dict[str, str]:
    """The environment of `make run` with nothing set: SQLite, file broker and cache."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY"}
    }
    environment.update(
        DATA_DIR=str(data_dir),
        PATH=f"{BIN}{os.pathsep}{environment.get('PATH', '')}",
        WEB_BIND=f"127.0.0.1:{_free_port()}",
        FLOWER_PORT=str(_free_port()),
    )
    return environment


def _prepare(environment: dict[str, str]) -> None:
    """The Makefile's `run` target up to honcho: migrate, demo data, static files, a clean
    control folder."""
    for command in (
        ["migrate", "--noinput"],
        ["setup_demo"],
        ["collectstatic", "--noinput", "--verbosity", "0"],
    ):
        subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=BASE_DIR,
            env={**environment, "ENTITLEMENTS_RESYNC_INTERVAL_SECONDS": "120"},
            check=True,
            capture_output=True,
            timeout=300,
        )
    shutil.rmtree(Path(environment["DATA_DIR"]) / "broker" / "control", ignore_errors=True)


def _pinged(environment: dict[str, str]) -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "messages", "inspect", "ping", "--timeout=2"],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode == 0 and "pong" in result.stdout


def _flower_shows_the_worker(url: str, auth: tuple[str, str]) -> bool:
    try:
        workers = requests.get(f"{url}/api/workers?refresh=1", auth=auth, timeout=10)
        if workers.status_code != 200 or not workers.json():
            return False
        page = requests.get(f"{url}/worker/{next(iter(workers.json()))}", auth=auth, timeout=10)
    except requests.RequestException:
        return False
    return page.status_code == 200 and "Unknown worker" not in page.text


def _session(session_id: int) -> list[psutil.Process]:
    """The processes of a session: honcho (its leader) and everything it started."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session_id:
                found.append(process)
        except (ProcessLookupError, PermissionError):
            pass
    return found


def _stop(honcho: subprocess.Popen) -> tuple[float, int, list[psutil.Process]]:
    """SIGTERM to run_demo (honcho) alone: it stops its processes, as on Ctrl-C in `make run`."""
    processes = _session(honcho.pid)
    began = time.monotonic()
    if honcho.poll() is None:
        honcho.send_signal(signal.SIGTERM)
    returncode = honcho.wait(timeout=60)
    _, alive = psutil.wait_procs(processes, timeout=10)
    return time.monotonic() - began, returncode, alive


@pytest.mark.slow
def test_make_run_starts_30_times_in_a_row_with_inspect_and_flower_working(tmp_path):
    data_dir = tmp_path / "data"
    up_times, stop_times, failures, failed_starts = [], [], [], set()
    for start in range(1, STARTS + 1):
        environment = _environment(data_dir)
        _prepare(environment)
        auth = (SUPERUSER_EMAIL, (data_dir / "demo_password").read_text().strip())
        flower = f"http://127.0.0.1:{environment['FLOWER_PORT']}"
        log_path = tmp_path / f"start-{start}.log"
        with log_path.open("wb") as log:
            began = time.monotonic()
            honcho = subprocess.Popen(
                [sys.executable, "manage.py", "run_demo"],
                cwd=BASE_DIR,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                pinged = flower_ok = False
                while time.monotonic() - began < START_TIMEOUT and not (pinged and flower_ok):
                    if honcho.poll() is not None:
                        break
                    pinged = pinged or _pinged(environment)
                    flower_ok = flower_ok or _flower_shows_the_worker(flower, auth)
                    if not (pinged and flower_ok):
                        time.sleep(0.5)
                if pinged and flower_ok:
                    up_times.append(time.monotonic() - began)
                else:
                    failures.append(
                        f"start {start}: ping {pinged}, Flower {flower_ok}, "
                        f"honcho {'exited' if honcho.poll() is not None else 'running'}"
                    )
            finally:
                stop_time, returncode, alive = _stop(honcho)
                for process in alive:
                    process.kill()
        stop_times.append(stop_time)
        log_text = log_path.read_text(errors="replace")
        signs = [sign for sign in BROKEN_BROKER_SIGNS if sign in log_text]
        if signs:
            failures.append(f"start {start}: {signs} in {log_path}")
        if alive:
            failures.append(f"start {start}: {len(alive)} processes outlived honcho")
        if "rc=-9" in log_text:
            failures.append(f"start {start}: honcho had to SIGKILL a process, see {log_path}")
        if failures and failures[-1].startswith(f"start {start}:"):
            failed_starts.add(start)
        outcome = "failed" if start in failed_starts else f"up in {up_times[-1]:.1f} s"
        print(f"start {start}: {outcome}, stopped in {stop_time:.1f} s (honcho rc {returncode})")

    up = up_times or [0.0]
    _measured.append(
        f"embedded default, {STARTS} `make run` starts in a row: "
        f"{STARTS - len(failed_starts)}/{STARTS} with inspect ping and Flower's worker page; "
        f"up in median {statistics.median(up):.1f} s, max {max(up):.1f} s; "
        f"stopped in median {statistics.median(stop_times):.1f} s, max {max(stop_times):.1f} s"
    )
    assert failures == []
