"""Shared cache of upstream answers: fresh for a while, then stale-but-usable while it is down."""

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.core.cache import cache

from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.errors import EntitlementsUnavailableError
from core.entitlements.factory import get_backend
from core.models import normalize_email

CacheStatus = Literal["miss", "hit", "stale"]

# Answers worth keeping: they describe the user. Request and configuration errors describe
# us and must show again as soon as they are fixed; invalid answers are never trusted.
_CACHEABLE = frozenset({AnswerKind.AUTHORITATIVE, AnswerKind.NO_INFORMATION})


@dataclass(frozen=True, slots=True)
class FetchedAnswer:
    """An upstream answer and where it came from: the upstream (miss) or the cache."""

    answer: UpstreamAnswer
    cache: CacheStatus


def cache_key(user_id: Any) -> str:
    """The user's cache key: the user id, never the email."""
    return f"entitlements:answer:{user_id}"


def fetch_entitlements(
    *, user, forwarded_claims: Mapping[str, Any], force_refresh: bool = False
) -> FetchedAnswer:
    """The user's answer: cached if fresh (unless forced), else asked upstream.

    When the upstream is unavailable, the last cached answer is served as stale while it is
    younger than ENTITLEMENTS_STALE_FALLBACK_SECONDS; past that, EntitlementsUnavailableError.
    """
    backend = get_backend()
    key = cache_key(user.pk)
    request = _request_digest(backend, user, forwarded_claims)
    entry = _usable_entry(cache.get(key), request)
    age = time.time() - entry["fetched_at"] if entry else None

    if entry and not force_refresh and age < settings.ENTITLEMENTS_CACHE_TIMEOUT:
        return FetchedAnswer(UpstreamAnswer.from_dict(entry["answer"]), "hit")

    answer = backend.get_entitlements(user=user, forwarded_claims=forwarded_claims)
    if answer.kind is AnswerKind.UNAVAILABLE:
        if entry and age < settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS:
            return FetchedAnswer(UpstreamAnswer.from_dict(entry["answer"]), "stale")
        raise EntitlementsUnavailableError(answer.error_code)
    if answer.kind in _CACHEABLE:
        _store(key, request, answer)
    return FetchedAnswer(answer, "miss")


def _request_digest(backend, user, forwarded_claims: Mapping[str, Any]) -> str:
    """A digest of what the upstream is asked, so a changed email or claim is a cache miss."""
    claims = {name: forwarded_claims.get(name) for name in backend.forwarded_claim_names}
    asked = [type(backend).__qualname__, normalize_email(user.email), claims]
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()


def _usable_entry(entry: Any, request: str) -> dict[str, Any] | None:
    """The cached entry if it answers this same request."""
    if isinstance(entry, dict) and entry.get("request") == request:
        return entry
    return None


def _store(key: str, request: str, answer: UpstreamAnswer) -> None:
    """Keep the answer for as long as either window may still use it."""
    lifetime = max(
        settings.ENTITLEMENTS_CACHE_TIMEOUT, settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS
    )
    if lifetime <= 0:
        return
    entry = {"request": request, "fetched_at": time.time(), "answer": answer.as_dict()}
    cache.set(key, entry, timeout=lifetime)
