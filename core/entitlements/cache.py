"""Shared cache of upstream answers: fresh for a while, then stale-but-usable while it is down."""

import hashlib
import json
import math
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache

from core import metrics
from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.errors import EntitlementsUnavailableError
from core.entitlements.factory import get_backend
from core.entitlements.upstream_guard import Priority, UpstreamGuardError, guarded_upstream_call
from core.validators import normalize_email

# Answers worth keeping: they describe the user. Request and configuration errors describe
# us and must show again as soon as they are fixed; invalid answers are never trusted.
_CACHEABLE = frozenset(
    {AnswerKind.AUTHORITATIVE, AnswerKind.NO_INFORMATION, AnswerKind.ACCESS_ENDED}
)


def cache_key(user_id: Any) -> str:
    """The user's cache key: the user id, never the email."""
    return f"entitlements:answer:{user_id}"


def fetch_entitlements(
    *,
    user,
    forwarded_claims: Mapping[str, Any],
    force_refresh: bool = False,
    fetched_since: datetime | None = None,
    priority: Priority = Priority.INTERACTIVE,
) -> UpstreamAnswer:
    """The user's answer: cached if fresh (unless forced), else asked upstream.

    `fetched_since` narrows "fresh" to an answer fetched at or after that moment (a person's
    request is served by an answer asked after it was made); `force_refresh` asks in any case.
    When the upstream is unavailable, the last cached answer is served as stale while it is
    younger than ENTITLEMENTS_STALE_FALLBACK_SECONDS, forced or not; past that,
    EntitlementsUnavailableError. An open circuit or an exhausted rate limit counts as
    unavailable, without calling upstream.
    """
    backend = get_backend()
    key = cache_key(user.pk)
    request = _request_digest(backend, user, forwarded_claims)
    entry = _usable_entry(cache.get(key), request)
    age = time.time() - entry["fetched_at"] if entry else math.inf

    if (
        entry
        and not force_refresh
        and age < settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS
        and (fetched_since is None or entry["fetched_at"] >= fetched_since.timestamp())
    ):
        return UpstreamAnswer.from_dict(entry["answer"], cache="hit")

    # The answer dates from when it was asked: one asked before a request cannot honour it,
    # even if it arrives after.
    asked_at = time.time()
    answer = _ask_upstream(backend, user, forwarded_claims, priority)
    if answer.kind is AnswerKind.UNAVAILABLE:
        if entry and age < settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS:
            return UpstreamAnswer.from_dict(entry["answer"], cache="stale")
        raise EntitlementsUnavailableError(answer.error_code)
    if answer.kind in _CACHEABLE:
        _store(key, request, answer, asked_at=asked_at)
    return answer


class _Unavailable(Exception):
    """Carries an unavailable answer out of the guard, so the breaker counts it as a failure."""

    def __init__(self, answer: UpstreamAnswer):
        super().__init__(answer.error_code)
        self.answer = answer


def _ask_upstream(
    backend, user, forwarded_claims: Mapping[str, Any], priority: Priority
) -> UpstreamAnswer:
    """One call to the backend, through the shared circuit breaker and rate limit."""
    if not backend.guard_upstream_calls:
        return backend.get_entitlements(user=user, forwarded_claims=forwarded_claims)
    try:
        with guarded_upstream_call(priority=priority, transient=(_Unavailable,)):
            answer = backend.get_entitlements(user=user, forwarded_claims=forwarded_claims)
            if answer.kind is AnswerKind.UNAVAILABLE:
                raise _Unavailable(answer)
    except _Unavailable as unavailable:
        return unavailable.answer
    except UpstreamGuardError as refused:
        metrics.upstream_refused(reason=refused.code)
        return UpstreamAnswer.failure(AnswerKind.UNAVAILABLE, refused.code)
    return answer


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


def _store(key: str, request: str, answer: UpstreamAnswer, *, asked_at: float) -> None:
    """Keep the answer for as long as either window may still use it."""
    lifetime = max(
        settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS, settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS
    )
    if lifetime <= 0:
        return
    entry = {"request": request, "fetched_at": asked_at, "answer": answer.as_dict()}
    cache.set(key, entry, timeout=lifetime)
