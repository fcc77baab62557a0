"""Entitlements: which mail domains a user may administer, and the sync that applies it.

The one public door. Everything else in this package is an implementation detail.
"""

from core.entitlements.backends.base import AnswerKind, EntitlementsBackend, UpstreamAnswer
from core.entitlements.blast_radius import (
    ReleaseReport,
    RunBudget,
    RunRevocationGuard,
    discard_held_revocations,
    new_run_budget,
    pending_held_revocations,
    release_held_revocations,
)
from core.entitlements.cache import FetchedAnswer, fetch_entitlements
from core.entitlements.errors import (
    EntitlementsConfigurationError,
    EntitlementsError,
    EntitlementsUnavailableError,
)
from core.entitlements.factory import forwarded_claim_names, get_backend
from core.entitlements.reconcile import (
    RevocationGuard,
    SyncResult,
    UserAnswer,
    grant_accesses_for_new_domains,
    reconcile_admin_accesses,
    reconcile_many_admin_accesses,
)
from core.entitlements.selectors import users_entitled_to
from core.entitlements.service import (
    fetch_user_answer,
    finish_user_syncs,
    record_sync_unavailable,
    start_user_syncs,
    sync_user_entitlements,
)
from core.entitlements.upstream_guard import Priority

__all__ = (
    "AnswerKind",
    "EntitlementsBackend",
    "EntitlementsConfigurationError",
    "EntitlementsError",
    "EntitlementsUnavailableError",
    "FetchedAnswer",
    "Priority",
    "ReleaseReport",
    "RevocationGuard",
    "RunBudget",
    "RunRevocationGuard",
    "SyncResult",
    "UpstreamAnswer",
    "UserAnswer",
    "discard_held_revocations",
    "fetch_entitlements",
    "fetch_user_answer",
    "finish_user_syncs",
    "forwarded_claim_names",
    "get_backend",
    "grant_accesses_for_new_domains",
    "new_run_budget",
    "pending_held_revocations",
    "reconcile_admin_accesses",
    "reconcile_many_admin_accesses",
    "record_sync_unavailable",
    "release_held_revocations",
    "start_user_syncs",
    "sync_user_entitlements",
    "users_entitled_to",
)
