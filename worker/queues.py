"""Queue names and the router that sends each entitlements task to its queue."""

# A person waits on a login-triggered sync: it must never sit behind a full resync.
INTERACTIVE_QUEUE = "interactive"
# Periodic and admin-wide work: as much throughput as the workers give, latency unimportant.
BULK_QUEUE = "bulk"

# Task names are stable public identifiers: operators read them in Flower and in the beat
# schedule, and core sends entitlements.sync_user by this name.
SYNC_USER_TASK = "entitlements.sync_user"
SYNC_ALL_ADMINS_TASK = "entitlements.sync_all_admins"
SYNC_DOMAIN_ADMINS_TASK = "entitlements.sync_domain_admins"
SYNC_USERS_BATCH_TASK = "entitlements.sync_users_batch"
SWEEP_PENDING_SYNCS_TASK = "entitlements.sweep_pending_syncs"

QUEUE_BY_TASK = {
    SYNC_USER_TASK: INTERACTIVE_QUEUE,
    # The sweep re-enqueues requests people made: short, so it goes with them.
    SWEEP_PENDING_SYNCS_TASK: INTERACTIVE_QUEUE,
    SYNC_ALL_ADMINS_TASK: BULK_QUEUE,
    SYNC_DOMAIN_ADMINS_TASK: BULK_QUEUE,
    SYNC_USERS_BATCH_TASK: BULK_QUEUE,
}


def route_task(name, args, kwargs, options, task=None, **kw):
    """Celery router (CELERY_TASK_ROUTES): the queue of an entitlements task, None for others.

    A queue given explicitly when sending wins over this route.
    """
    queue = QUEUE_BY_TASK.get(name)
    return {"queue": queue} if queue else None
