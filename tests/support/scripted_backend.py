"""A stand-in upstream for the worker tests: admin domains per email, or unavailable."""

import time
from collections.abc import Mapping
from typing import Any

from core.entitlements.backends.base import AnswerKind, EntitlementsBackend, UpstreamAnswer

SCRIPTED_BACKEND = "tests.support.scripted_backend.ScriptedBackend"


class ScriptedBackend(EntitlementsBackend):
    """Answers from its parameters: a domain list per email, 'unavailable' for listed emails,
    no information for anybody else; optionally slow, optionally forwarding claims."""

    def __init__(
        self,
        *,
        admins_by_email: Mapping[str, list[str]] | None = None,
        unavailable_emails: list[str] = (),
        claims: list[str] = (),
        latency_seconds: float = 0.0,
    ):
        self.admins_by_email = dict(admins_by_email or {})
        self.unavailable_emails = set(unavailable_emails)
        self.claims = list(claims)
        self.latency_seconds = latency_seconds

    @property
    def forwarded_claim_names(self) -> list[str]:
        return self.claims

    def get_entitlements(self, *, user, forwarded_claims: Mapping[str, Any]) -> UpstreamAnswer:
        time.sleep(self.latency_seconds)
        if user.email in self.unavailable_emails:
            return UpstreamAnswer.failure(AnswerKind.UNAVAILABLE, "http_503")
        if user.email in self.admins_by_email:
            return UpstreamAnswer.authoritative(self.admins_by_email[user.email])
        return UpstreamAnswer.failure(AnswerKind.NO_INFORMATION, "no_organization")
