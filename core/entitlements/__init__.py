"""Entitlements: which mail domains a user may administer, and the sync that applies it.

The one public door; the rest of the package is implementation. A login, the admin, the
command line and provisioning call `request_sync` (or `request_full_resync`,
`request_domain_resync`); the worker's tasks run `sync_user_entitlements` for one user, and
for a run's batches the steps `start_user_syncs`, `fetch_user_answer` (threads),
`finish_user_syncs`, counted in the run by `runs`.
"""

from core.entitlements import runs
from core.entitlements.accesses import grant_accesses_for_new_domains
from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.errors import EntitlementsConfigurationError, EntitlementsUnavailableError
from core.entitlements.factory import forwarded_claim_names, get_backend
from core.entitlements.held_revocations import discard_held_revocations, release_held_revocations
from core.entitlements.reconcile import RevocationBudget, SyncResult
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
from core.entitlements.revocation_budget import RunRevocationBudget
from core.entitlements.sync import (
    fetch_user_answer,
    finish_user_syncs,
    record_sync_unavailable,
    record_syncs_not_run,
    start_user_syncs,
    sync_user_entitlements,
)
from core.entitlements.upstream_guard import Priority, upstream_status

__all__ = (
    "AnswerKind",
    "EntitlementsConfigurationError",
    "EntitlementsUnavailableError",
    "Priority",
    "RequestOutcome",
    "RevocationBudget",
    "RunRevocationBudget",
    "SyncNotEnqueuedError",
    "SyncRequest",
    "SyncResult",
    "TaskName",
    "UpstreamAnswer",
    "discard_held_revocations",
    "enqueue_outstanding_requests",
    "fetch_user_answer",
    "finish_user_syncs",
    "forwarded_claim_names",
    "get_backend",
    "grant_accesses_for_new_domains",
    "record_sync_unavailable",
    "record_syncs_not_run",
    "release_held_revocations",
    "request_domain_resync",
    "request_full_resync",
    "request_sync",
    "runs",
    "start_user_syncs",
    "sync_user_entitlements",
    "upstream_status",
)
