"""Shared cache of upstream answers: fresh for a while, then stale-but-usable while it is down."""

import hashlib
import json
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache

from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.factory import get_backend
from core.validators import normalize_email

# Answers worth keeping: they describe the user. Request and configuration errors describe
# us and must show again as soon as they are fixed; invalid answers are never trusted.
_CACHEABLE = frozenset(
    {AnswerKind.AUTHORITATIVE, AnswerKind.NO_INFORMATION, AnswerKind.ACCESS_ENDED}
)


def cache_key(user_id: Any) -> str:
    """The user's cache key: the user id, never the email."""
    return f"entitlements:answer:{user_id}"


def read_fresh_answer(
    *, user, forwarded_claims: Mapping[str, Any], asked_since: datetime | None
) -> UpstreamAnswer | None:
    """The cached answer to this request if younger than ENTITLEMENTS_CACHE_TIMEOUT_SECONDS.

    `asked_since` narrows "fresh" to an answer asked upstream at or after that moment.
    """
    entry = _read(user, forwarded_claims)
    if entry is None or _age(entry) >= settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS:
        return None
    if asked_since is not None and entry["fetched_at"] < asked_since.timestamp():
        return None
    return UpstreamAnswer.from_dict(entry["answer"], cache="hit")


def read_stale_answer(*, user, forwarded_claims: Mapping[str, Any]) -> UpstreamAnswer | None:
    """The cached answer to this request if younger than ENTITLEMENTS_STALE_FALLBACK_SECONDS."""
    entry = _read(user, forwarded_claims)
    if entry is None or _age(entry) >= settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS:
        return None
    return UpstreamAnswer.from_dict(entry["answer"], cache="stale")


def store_answer(
    *, user, forwarded_claims: Mapping[str, Any], answer: UpstreamAnswer, asked_at: float
) -> None:
    """Keep an answer that describes the user, dated from when it was asked (a Unix time).

    It lives for as long as either window may still use it.
    """
    lifetime = max(
        settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS, settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS
    )
    if answer.kind not in _CACHEABLE or lifetime <= 0:
        return
    entry = {
        "request": _request_digest(user, forwarded_claims),
        "fetched_at": asked_at,
        "answer": answer.as_dict(),
    }
    cache.set(cache_key(user.pk), entry, timeout=lifetime)


def _read(user, forwarded_claims: Mapping[str, Any]) -> dict[str, Any] | None:
    """The user's cached entry if it answers this same request."""
    entry = cache.get(cache_key(user.pk))
    if isinstance(entry, dict) and entry.get("request") == _request_digest(user, forwarded_claims):
        return entry
    return None


def _age(entry: Mapping[str, Any]) -> float:
    return time.time() - entry["fetched_at"]


def _request_digest(user, forwarded_claims: Mapping[str, Any]) -> str:
    """A digest of what the upstream is asked, so a changed email or claim is a cache miss."""
    backend = get_backend()
    claims = {name: forwarded_claims.get(name) for name in backend.forwarded_claim_names}
    asked = [type(backend).__qualname__, normalize_email(user.email), claims]
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()
