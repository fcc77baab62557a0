"""Entitlements: which mail domains a user may administer, and the sync that applies it.

The one public door; the rest of the package is implementation. A login, the admin, the
command line and provisioning ask for syncs (`request_sync`, `request_resync`) and show the
operator what `describe` says of the receipt they get; the command's dry run asks
`plan_sync`. The worker's tasks run one user's sync
(`sync_user_entitlements`), a run's fan-out (`run_resync`) and its batches
(`sync_run_batch`), and the sweep (`enqueue_outstanding_requests`); they add retries and
routing only. A custom backend subclasses `backends.base.EntitlementsBackend`.
"""

from core.entitlements.accesses import grant_accesses_for_new_domains
from core.entitlements.batches import sync_run_batch
from core.entitlements.fan_out import run_resync
from core.entitlements.held_revocations import discard_held_revocations, release_held_revocations
from core.entitlements.receipts import describe
from core.entitlements.sync import plan_sync, sync_user_entitlements
from core.entitlements.sync_requests import (
    enqueue_outstanding_requests,
    request_resync,
    request_sync,
)
from core.entitlements.upstream_guard import upstream_status

__all__ = (
    "describe",
    "discard_held_revocations",
    "enqueue_outstanding_requests",
    "grant_accesses_for_new_domains",
    "plan_sync",
    "release_held_revocations",
    "request_resync",
    "request_sync",
    "run_resync",
    "sync_run_batch",
    "sync_user_entitlements",
    "upstream_status",
)
