"""Queue names and the router that sends each entitlements task to its queue."""

# A person waits on a login-triggered sync: it must never sit behind a full resync.
INTERACTIVE_QUEUE = "interactive"
# Periodic and admin-wide work: as much throughput as the workers give, latency unimportant.
BULK_QUEUE = "bulk"

QUEUE_BY_TASK = {
    "entitlements.sync_user": INTERACTIVE_QUEUE,
    # The sweep re-enqueues requests a person made: short, so it goes with them.
    "entitlements.sweep_pending_syncs": INTERACTIVE_QUEUE,
    "entitlements.sync_all_admins": BULK_QUEUE,
    "entitlements.sync_domain_admins": BULK_QUEUE,
    "entitlements.sync_users_batch": BULK_QUEUE,
}


def route_task(name, args, kwargs, options, task=None, **kw):
    """Celery router (CELERY_TASK_ROUTES): the queue of an entitlements task, None for others.

    A queue given explicitly when sending wins over this route.
    """
    queue = QUEUE_BY_TASK.get(name)
    return {"queue": queue} if queue else None
