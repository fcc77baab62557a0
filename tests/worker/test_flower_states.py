"""Flower tells the truth: a sync that applied no answer shows as failed, and a full run an
operator starts from Flower is recorded as started by hand, not as the periodic one.

Flower runs as operators start it (`manage.py run_flower`, basic auth) against a worker on the
test Redis; the DeployCenter stub over HTTP refuses the worker's key (401).
"""

import time

import requests

from core.entitlements.sync_requests import request_sync
from core.models import EntitlementSyncState, SyncRun
from tests.deploycenter_stub import ALPHA_SIRET
from tests.support import wait_until
from tests.support.flower import CREDENTIALS

FULL_RESYNC = "entitlements.sync_all_admins"


def _state_in_flower(url: str, task_id: str, *, seconds: float) -> dict | None:
    """Flower's view of the task once it shows it ended, or None after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = requests.get(f"{url}/api/task/info/{task_id}", auth=CREDENTIALS, timeout=5)
        if info.ok and info.json().get("state") in ("SUCCESS", "FAILURE"):
            return info.json()
        time.sleep(0.2)
    return None


def test_a_refused_sync_fails_in_flower_and_a_run_applied_there_is_by_hand(
    transactional_db,
    celery_worker,
    celery_app,
    depends_on_current_app,
    broker_queues,
    flower,
    make_user,
    deploycenter_backend,
    settings,
):
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = deploycenter_backend.backend_parameters(
        api_key="not-the-key"
    )
    users = [make_user() for _ in range(5)]
    for user in users:
        EntitlementSyncState.objects.create(user=user, forwarded_claims={"siret": ALPHA_SIRET})

    # Flower may miss the first events while its consumer binds: the first sync it shows is
    # the one checked.
    for user in users:
        task_id = request_sync(user=user, trigger="login").task_id
        task = _state_in_flower(flower, task_id, seconds=15)
        if task is not None:
            break
    assert task is not None, "Flower showed none of the syncs"
    assert task["state"] == "FAILURE"
    assert task["exception"] == (
        f"SyncNotApplied('sync of user {user.pk} (login) not applied: error (http_401)')"
    )
    assert user.email not in str(task)

    # Flower sends the task, then may answer 500 while it reads the new task's state back
    # from the database result backend: the run it started is what is checked.
    requests.post(
        f"{flower}/api/task/async-apply/{FULL_RESYNC}", json={}, auth=CREDENTIALS, timeout=5
    )
    run = wait_until(
        lambda: SyncRun.objects.filter(scope="all").first(), message="the run applied from Flower"
    )
    assert run.trigger == "manual", "a run started by hand is not the periodic one"


def test_a_run_beat_sends_without_a_trigger_is_periodic(
    transactional_db, celery_worker, celery_app, depends_on_current_app, broker_queues
):
    # What django-celery-beat's scheduler adds to every message it sends.
    result = celery_app.send_task(
        FULL_RESYNC, headers={"periodic_task_name": "entitlements: resync all admins"}
    )
    result.get(timeout=20)

    assert SyncRun.objects.get(task_id=result.id).trigger == "periodic"
