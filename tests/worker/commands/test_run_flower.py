"""`manage.py run_flower` as operators start it: Flower shows a sync with its state and result
behind basic auth and refuses anybody without the credentials; run open in debug, its API (which
can apply tasks) still refuses everybody, whatever FLOWER_UNAUTHENTICATED_API says; it refuses to
start without credentials outside debug, or with malformed ones. Its /metrics asks for the
credentials too (Flower 2.2 alone would not), its /healthcheck answers anybody `OK`, and it
never writes into the app's multiprocess metrics directory."""

import time

import pytest
import requests
from django.core.management import CommandError
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from core.entitlements.sync_requests import request_sync
from tests.support.commands import run
from tests.support.flower import CREDENTIALS, running_flower


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
    users = [make_user() for _ in range(5)]
    scripted_upstream(admins_by_email={user.email: [] for user in users})

    # Flower logs its connection before its event queue is bound: on a loaded machine the
    # first events can still be missed. A sync Flower shows proves the events flow; the
    # first one it shows is the one checked.
    for user in users:
        task_id = request_sync(user=user, trigger="login").task_id
        celery_app.AsyncResult(task_id).get(timeout=20)
        info = _task_in_flower(flower, task_id, seconds=15)
        if info is not None:
            break
    assert info is not None, "Flower showed none of the syncs"
    task = info.json()
    assert task["name"] == "entitlements.sync_user"
    assert task["args"] == f"['{user.pk}', 'login']"
    assert "'status': 'ok'" in task["result"]
    assert user.email not in info.text

    for path in ("/", "/tasks", f"/api/task/info/{task_id}", "/api/workers", "/api/tasks"):
        assert requests.get(f"{flower}{path}", timeout=5).status_code == 401, path
    wrong = (CREDENTIALS[0], "wrong")
    assert requests.get(f"{flower}/api/tasks", auth=wrong, timeout=5).status_code == 401
    applied = requests.post(
        f"{flower}/api/task/async-apply/entitlements.sync_all_admins", timeout=5
    )
    assert applied.status_code == 401


def _task_in_flower(url: str, task_id: str, *, seconds: float):
    """Flower's answer about the task once it shows it succeeded, or None after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = requests.get(f"{url}/api/task/info/{task_id}", auth=CREDENTIALS, timeout=5)
        if info.ok and info.json().get("state") == "SUCCESS":
            return info
        time.sleep(0.2)
    return None


def test_open_flower_in_debug_keeps_its_api_closed(transactional_db, broker_queues):
    # Debug on loopback may run Flower without basic auth (its pages are open), but the API
    # that applies tasks stays closed even though FLOWER_UNAUTHENTICATED_API asks otherwise.
    environment = {"DJANGO_DEBUG": "true", "FLOWER_BASIC_AUTH": ""}
    with running_flower(**environment) as url:
        assert requests.get(f"{url}/", timeout=5).status_code == 200
        for path in ("/api/workers", "/api/tasks", "/api/task/info/x", "/api/queues/length"):
            assert requests.get(f"{url}{path}", timeout=5).status_code == 401, path
        applied = requests.post(
            f"{url}/api/task/async-apply/entitlements.sync_all_admins", json={}, timeout=5
        )
        assert applied.status_code == 401
        assert requests.post(f"{url}/api/task/revoke/x", timeout=5).status_code == 401

    assert broker_queues.length("bulk") == 0, "no task was applied"


class TestRunFlowerRefusals:
    def test_refuses_without_basic_auth_outside_debug(self, settings):
        settings.FLOWER_BASIC_AUTH = ""
        settings.DEBUG = False

        with pytest.raises(CommandError, match="FLOWER_BASIC_AUTH is not set"):
            run("run_flower")

    def test_refuses_open_flower_on_a_public_address_even_in_debug(self, settings):
        settings.FLOWER_BASIC_AUTH = ""
        settings.DEBUG = True

        with pytest.raises(CommandError, match="FLOWER_BASIC_AUTH is not set"):
            run("run_flower", "--address", "0.0.0.0")

    @pytest.mark.parametrize("auth", ["admin", "admin:", ":secret", "a:b,broken"])
    def test_refuses_malformed_credentials(self, settings, auth):
        settings.FLOWER_BASIC_AUTH = auth

        with pytest.raises(CommandError, match="user:password"):
            run("run_flower")


def test_flower_metrics_need_credentials_and_stay_out_of_the_apps(
    transactional_db,
    celery_worker,
    celery_app,
    depends_on_current_app,
    broker_queues,
    make_user,
    scripted_upstream,
    tmp_path,
):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    user = make_user()
    scripted_upstream(admins_by_email={user.email: []})
    environment = {
        "FLOWER_BASIC_AUTH": ":".join(CREDENTIALS),
        # As `make run` and compose give every process.
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    with running_flower(**environment) as url:
        # Events flow through Flower: its event counters move.
        for _ in range(5):
            task_id = request_sync(user=user, trigger="login").task_id
            celery_app.AsyncResult(task_id).get(timeout=20)
            if _task_in_flower(url, task_id, seconds=15) is not None:
                break
        stranger = requests.get(f"{url}/metrics", timeout=5)
        wrong = requests.get(f"{url}/metrics", auth=(CREDENTIALS[0], "wrong"), timeout=5)
        own = requests.get(f"{url}/metrics", auth=CREDENTIALS, timeout=5)
        health = requests.get(f"{url}/healthcheck", timeout=5)

    assert stranger.status_code == 401 and "flower_" not in stranger.text
    assert stranger.headers["WWW-Authenticate"] == 'Basic realm="flower"'
    assert wrong.status_code == 401
    assert own.status_code == 200
    assert 'flower_events_total{task="entitlements.sync_user"' in own.text
    assert (health.status_code, health.text) == (200, "OK")
    # Nothing of Flower's in the directory the app's /metrics adds up.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    assert [family.name for family in registry.collect() if "flower" in family.name] == []
