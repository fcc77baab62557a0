"""Queue names and the router that sends each entitlements task to its queue."""

from core.task_names import TaskName

# A person waits on a login-triggered sync: it must never sit behind a full resync.
INTERACTIVE_QUEUE = "interactive"
# Periodic and admin-wide work: as much throughput as the workers give, latency unimportant.
BULK_QUEUE = "bulk"
# Change signals' user syncs (DeployCenter's webhooks): nobody waits on them, and a bulk change
# sends them by the hundred, which logins must never queue behind; nor may they queue behind a
# full run's batches, or a change would wait for the run. A worker of their own takes them.
SIGNALS_QUEUE = "signals"

QUEUE_BY_TASK = {
    TaskName.SYNC_USER: INTERACTIVE_QUEUE,
    # The sweep re-enqueues requests people made: short, so it goes with them.
    TaskName.SWEEP_PENDING_SYNCS: INTERACTIVE_QUEUE,
    TaskName.SYNC_ALL_ADMINS: BULK_QUEUE,
    TaskName.SYNC_DOMAIN_ADMINS: BULK_QUEUE,
    TaskName.SYNC_ORGANISATION_ADMINS: BULK_QUEUE,
    TaskName.SYNC_USERS_BATCH: BULK_QUEUE,
}


# Trigger.CHANGE_SIGNAL's value (a test checks they agree; this module imports no model).
CHANGE_SIGNAL = "change_signal"


def route_task(name, args, kwargs, options, task=None, **kw):
    """Celery router (CELERY_TASK_ROUTES): the queue of an entitlements task, None for others.

    A change signal's user sync goes to the signals queue. A queue given explicitly when
    sending wins over this route.
    """
    if name == TaskName.SYNC_USER and list(args or ())[1:2] == [CHANGE_SIGNAL]:
        return {"queue": SIGNALS_QUEUE}
    queue = QUEUE_BY_TASK.get(name)
    return {"queue": queue} if queue else None
