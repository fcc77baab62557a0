"""manage.py run_demo, as `make run` starts it: the first login printed once the web server
answers, and Ctrl-C stops every process cleanly (no pool child killed by SIGTERM)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from core.management.commands.setup_demo import SUPERUSER_EMAIL
from tests.support.commands import BASE_DIR, manage_environment, prepare_demo

# A start on the loaded 2-core machine takes 10-20 s; this only bounds a hung one.
START_TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _up(output: str) -> bool:
    """The banner printed and both workers ready (their pool children started)."""
    workers_ready = all(
        re.search(rf"{node}@\S+ ready\.", output) for node in ("interactive", "bulk")
    )
    return "Ctrl-C stops" in output and workers_ready


@pytest.mark.long
def test_prints_the_login_once_up_and_stops_cleanly_on_ctrl_c(tmp_path):
    prepare_demo(tmp_path)
    password = (tmp_path / "demo_password").read_text().strip()
    web = f"127.0.0.1:{_free_port()}"
    environment = manage_environment(
        DATA_DIR=str(tmp_path),
        WEB_BIND=web,
        FLOWER_PORT=str(_free_port()),
        PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    )
    demo = subprocess.Popen(
        [sys.executable, "manage.py", "run_demo"],
        cwd=BASE_DIR,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not _up("".join(lines)):
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
        processes = psutil.Process(demo.pid).children(recursive=True)
        # Ctrl-C: the terminal signals the foreground process group.
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    output = "".join(lines) + rest

    assert f"Django admin  http://{web}/admin/" in output
    assert f"User          {SUPERUSER_EMAIL}" in output
    assert f"Password      {password}" in output
    assert f"cat {tmp_path / 'demo_password'}" in output
    # The banner waited for the web server's health check.
    assert 'GET /healthz/ HTTP/1.1" 200' in output
    assert demo.returncode == 130, output[-3000:]
    # The web server and the workers stopped by their own SIGTERM handlers (beat and Flower may
    # still be starting: -15 is their stop then).
    for stopped in ("web", "worker-interactive", "worker-bulk"):
        assert f"{stopped} stopped (rc=0)" in output, output[-3000:]
    assert "SIGTERM)" not in output and "Traceback" not in output, output[-3000:]
    assert "SIGKILL" not in output
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert alive == []
