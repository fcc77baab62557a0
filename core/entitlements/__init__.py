"""Entitlements: which mail domains a user may administer, and the sync that applies it.

The one public door; the rest of the package is implementation. A login, the admin, the
command line and provisioning call `request_sync` (or `request_full_resync`,
`request_domain_resync`) and read what it did in the `SyncRequest`; the worker's tasks run
`sync_user_entitlements` for one user. A run's batches take the same sync in steps from
`sync` (`start_user_syncs`, `fetch_user_answer` in threads, `finish_user_syncs`) and follow
the run's rules in `runs`. A custom backend subclasses `backends.base.EntitlementsBackend`.
"""

from core.entitlements import change_signals, runs, sync
from core.entitlements.accesses import grant_accesses_for_new_domains
from core.entitlements.errors import EntitlementsConfigurationError, EntitlementsUnavailableError
from core.entitlements.factory import forwarded_claim_names, get_backend
from core.entitlements.held_revocations import discard_held_revocations, release_held_revocations
from core.entitlements.reconcile import SyncResult
from core.entitlements.requests import (
    RequestOutcome,
    SyncNotEnqueuedError,
    SyncRequest,
    TaskName,
    enqueue_outstanding_requests,
    request_domain_resync,
    request_full_resync,
    request_sync,
)
from core.entitlements.sync import sync_user_entitlements
from core.entitlements.upstream_guard import Priority, upstream_status

__all__ = (
    "EntitlementsConfigurationError",
    "EntitlementsUnavailableError",
    "Priority",
    "RequestOutcome",
    "SyncNotEnqueuedError",
    "SyncRequest",
    "SyncResult",
    "TaskName",
    "change_signals",
    "discard_held_revocations",
    "enqueue_outstanding_requests",
    "forwarded_claim_names",
    "get_backend",
    "grant_accesses_for_new_domains",
    "release_held_revocations",
    "request_domain_resync",
    "request_full_resync",
    "request_sync",
    "runs",
    "sync",
    "sync_user_entitlements",
    "upstream_status",
)
