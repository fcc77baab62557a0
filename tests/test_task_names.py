"""core/task_names.py: every task name core sends is a task the worker defines and routes."""

from celery import current_app

from core.task_names import TaskName
from worker.queues import QUEUE_BY_TASK


def test_every_name_is_a_registered_task():
    assert {name for name in TaskName} <= set(current_app.tasks)


def test_every_name_has_its_queue():
    # A task without a route would go to Celery's default queue, which no worker consumes.
    assert set(QUEUE_BY_TASK) == set(TaskName)


def test_names_are_the_public_strings_operators_read():
    assert [str(name) for name in TaskName] == [
        "entitlements.sync_user",
        "entitlements.sync_all_admins",
        "entitlements.sync_domain_admins",
        "entitlements.sync_organisation_admins",
        "entitlements.sync_users_batch",
        "entitlements.sweep_pending_syncs",
    ]
