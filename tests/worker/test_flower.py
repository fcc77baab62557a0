"""Flower, started by `manage.py run_flower` as operators do, shows a sync with its state and
result behind basic auth, and refuses anybody without the credentials."""

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from core.sync_requests import request_sync

BASE_DIR = Path(__file__).resolve().parents[2]
CREDENTIALS = ("ops", "a-long-flower-password")


@pytest.fixture
def flower():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": ":".join(CREDENTIALS),
        # Must be ignored: it would open Flower's API to anybody.
        "FLOWER_UNAUTHENTICATED_API": "true",
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
                    if requests.get(f"{url}/api/workers", auth=CREDENTIALS, timeout=5).ok:
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


def test_flower_shows_the_sync_and_refuses_strangers(
    transactional_db,
    celery_worker,
    celery_app,
    depends_on_current_app,
    broker_queues,
    flower,
    make_user,
    scripted_upstream,
):
    user = make_user()
    scripted_upstream(admins_by_email={user.email: []})

    task_id = request_sync(user=user, trigger="login")
    celery_app.AsyncResult(task_id).get(timeout=20)

    deadline = time.monotonic() + 30
    while True:
        info = requests.get(f"{flower}/api/task/info/{task_id}", auth=CREDENTIALS, timeout=5)
        if info.ok and info.json().get("state") == "SUCCESS":
            break
        assert time.monotonic() < deadline, f"Flower never showed the task: {info.text}"
        time.sleep(0.2)
    task = info.json()
    assert task["name"] == "entitlements.sync_user"
    assert task["args"] == f"['{user.pk}', 'login']"
    assert "'status': 'ok'" in task["result"]
    assert user.email not in info.text

    for path in ("/", "/tasks", f"/api/task/info/{task_id}", "/api/workers"):
        assert requests.get(f"{flower}{path}", timeout=5).status_code == 401, path
    wrong = (CREDENTIALS[0], "wrong")
    assert requests.get(f"{flower}/api/tasks", auth=wrong, timeout=5).status_code == 401
    applied = requests.post(
        f"{flower}/api/task/async-apply/entitlements.sync_all_admins", timeout=5
    )
    assert applied.status_code == 401
