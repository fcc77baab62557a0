"""Flower as operators start it (`manage.py run_flower`), for the tests that look at it."""

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import requests

BASE_DIR = Path(__file__).resolve().parents[2]
CREDENTIALS = ("ops", "a-long-flower-password")


@contextmanager
def running_flower(**environment: str):
    """`manage.py run_flower` as operators start it; yields its URL once it serves."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        # Must be ignored: it would open Flower's API to anybody.
        "FLOWER_UNAUTHENTICATED_API": "true",
        **environment,
    }
    url = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        [sys.executable, "manage.py", "run_flower", f"--port={port}"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        # Flower only knows the tasks whose events arrive after its event consumer connected:
        # wait for that log line, not just for the HTTP port.
        events_connected = threading.Event()

        def read_log():
            for line in process.stderr:
                if "kombu.mixins" in line and "Connected to" in line:
                    events_connected.set()

        threading.Thread(target=read_log, daemon=True).start()
        try:
            assert events_connected.wait(60), "Flower's event consumer did not connect"
            deadline = time.monotonic() + 60
            while True:
                try:
                    requests.get(f"{url}/", timeout=5)
                    break
                except requests.ConnectionError:
                    pass
                assert process.poll() is None, "Flower exited"
                assert time.monotonic() < deadline, "Flower did not start"
                time.sleep(0.2)
            yield url
        finally:
            # Flower replaced run_flower's process (exec): this is Flower's own PID.
            process.terminate()
            process.wait(timeout=20)
