"""Entitlements: which mail domains a user may administer, and the sync that applies it.

The one public door. Everything else in this package is an implementation detail.
"""

from core.entitlements.backends.base import AnswerKind, EntitlementsBackend, UpstreamAnswer
from core.entitlements.cache import FetchedAnswer, fetch_entitlements
from core.entitlements.errors import (
    EntitlementsConfigurationError,
    EntitlementsError,
    EntitlementsUnavailableError,
)
from core.entitlements.factory import forwarded_claim_names, get_backend
from core.entitlements.reconcile import (
    SyncResult,
    grant_accesses_for_new_domains,
    reconcile_admin_accesses,
)
from core.entitlements.selectors import users_entitled_to
from core.entitlements.service import sync_user_entitlements

__all__ = (
    "AnswerKind",
    "EntitlementsBackend",
    "EntitlementsConfigurationError",
    "EntitlementsError",
    "EntitlementsUnavailableError",
    "FetchedAnswer",
    "SyncResult",
    "UpstreamAnswer",
    "fetch_entitlements",
    "forwarded_claim_names",
    "get_backend",
    "grant_accesses_for_new_domains",
    "reconcile_admin_accesses",
    "sync_user_entitlements",
    "users_entitled_to",
)
