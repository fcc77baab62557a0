"""Shared cache of upstream answers: fresh for a while, then stale-but-usable while it is down."""

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
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


# An entry to write: its cache key and what it holds.
Entry = tuple[str, dict[str, Any]]


class _Unread:
    """Says that a user's entry was not read beforehand: read it when needed."""


UNREAD = _Unread()


def cache_key(user_id: Any) -> str:
    """The user's cache key: the user id, never the email."""
    return f"entitlements:answer:{user_id}"


def read_entries(*, user_ids: Iterable[Any]) -> dict[Any, Any]:
    """Many users' cached entries in one read (one MGET on Redis), by user id; those with
    no entry are left out. A batch reads them before its fetches instead of one GET each."""
    keys = {cache_key(user_id): user_id for user_id in user_ids}
    return {keys[key]: entry for key, entry in cache.get_many(list(keys)).items()}


def read_fresh_answer(
    *,
    user,
    forwarded_claims: Mapping[str, Any],
    asked_since: datetime | None,
    entry: Any = UNREAD,
) -> UpstreamAnswer | None:
    """The cached answer to this request if younger than ENTITLEMENTS_CACHE_TIMEOUT_SECONDS.

    `asked_since` narrows "fresh" to an answer asked upstream at or after that moment.
    `entry` is the user's entry if read beforehand (`read_entries`; None: there was none).
    """
    if entry is UNREAD:
        entry = cache.get(cache_key(user.pk))
    entry = _matching(entry, user, forwarded_claims)
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


def answer_entry(
    *, user, forwarded_claims: Mapping[str, Any], answer: UpstreamAnswer, asked_at: float
) -> Entry | None:
    """The entry keeping an answer that describes the user, dated from when it was asked (a
    Unix time), for `store_entries`; None for an answer not worth keeping."""
    if answer.kind not in _CACHEABLE or _lifetime() <= 0:
        return None
    entry = {
        "request": _request_digest(user, forwarded_claims),
        "fetched_at": asked_at,
        "answer": answer.as_dict(),
    }
    return cache_key(user.pk), entry


def store_entries(entries: Sequence[Entry]) -> None:
    """Write entries made by `answer_entry`: a batch's together, in one round trip on Redis."""
    if entries:
        cache.set_many(dict(entries), timeout=_lifetime())


def _lifetime() -> float:
    """How long an entry lives: as long as either window may still use it."""
    return max(
        settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS, settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS
    )


def _read(user, forwarded_claims: Mapping[str, Any]) -> dict[str, Any] | None:
    """The user's cached entry if it answers this same request."""
    return _matching(cache.get(cache_key(user.pk)), user, forwarded_claims)


def _matching(entry: Any, user, forwarded_claims: Mapping[str, Any]) -> dict[str, Any] | None:
    """The entry if it answers this same request."""
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
