"""Routing: login syncs and the sweep on the interactive queue, admin-wide work and change
signals' syncs on bulk."""

import pytest
from celery import current_app

from worker.queues import route_task


@pytest.mark.parametrize(
    ("task", "args", "queue"),
    [
        (
            "entitlements.sync_user",
            ["00000000-0000-0000-0000-000000000001", "login"],
            "interactive",
        ),
        ("entitlements.sweep_pending_syncs", [], "interactive"),
        ("entitlements.sync_all_admins", ["periodic"], "bulk"),
        (
            "entitlements.sync_domain_admins",
            ["00000000-0000-0000-0000-000000000002", "admin"],
            "bulk",
        ),
        ("entitlements.sync_users_batch", [[], 1, "periodic"], "bulk"),
        # Nobody waits on a change signal's sync: logins never queue behind a storm of them.
        (
            "entitlements.sync_user",
            ["00000000-0000-0000-0000-000000000003", "change_signal"],
            "signals",
        ),
        ("entitlements.sync_organisation_admins", ["00000000-0000-0000-0000-000000000004"], "bulk"),
    ],
)
def test_each_task_lands_on_its_queue(broker_queues, task, args, queue):
    current_app.send_task(task, args=args)

    assert [message["task"] for message in broker_queues.messages(queue)] == [task]


def test_other_tasks_keep_the_default_route():
    assert route_task("celery.backend_cleanup", (), {}, {}) is None


def test_the_router_knows_the_change_signal_trigger():
    from core.models import Trigger
    from worker.queues import CHANGE_SIGNAL

    assert CHANGE_SIGNAL == Trigger.CHANGE_SIGNAL
