"""The interface every entitlements backend implements, and the classified answer it returns."""

import enum
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from django.core.exceptions import ValidationError

from core.validators import clean_domain_name, has_control_characters

# A forwarded claim longer than this is no identifier an upstream issued.
MAX_CLAIM_LENGTH = 255


class AnswerKind(enum.StrEnum):
    """What an upstream answer means for a sync; only UNAVAILABLE is transient."""

    AUTHORITATIVE = "authoritative"
    NO_INFORMATION = "no_information"
    # The user's organisation no longer has the service (its subscription ended): no admin
    # rights, once it has lasted ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS.
    ACCESS_ENDED = "access_ended"
    INVALID = "invalid"
    BAD_REQUEST = "bad_request"
    # Not asked: the user lacks what the upstream requires (a claim, an e-mail). Not a failure.
    NOT_ASKED = "not_asked"
    # The upstream refused our request: our settings (key, service id, URL) are wrong.
    CONFIGURATION_ERROR = "configuration"
    UNAVAILABLE = "unavailable"


# Where an answer came from: the upstream now ("miss"), or the shared cache, fresh or stale.
CacheStatus = Literal["miss", "hit", "stale"]


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """A classified upstream answer: the admin domain list when authoritative, else a reason."""

    kind: AnswerKind
    # Normalised, unique and sorted; empty unless the answer is authoritative.
    domains: tuple[str, ...] = ()
    # Short token saying why an answer is not authoritative (e.g. "not_activated", "timeout").
    error_code: str = ""
    # Set by the shared cache; a backend always answers "miss".
    cache: CacheStatus = "miss"

    @classmethod
    def authoritative(cls, domains: Iterable[str]) -> "UpstreamAnswer":
        """An authoritative list; raises ValueError when a name is not a domain name."""
        return cls(AnswerKind.AUTHORITATIVE, normalize_domain_names(domains))

    @classmethod
    def failure(cls, kind: AnswerKind, error_code: str) -> "UpstreamAnswer":
        """A non-authoritative answer of the given kind."""
        return cls(kind, (), error_code)

    @property
    def is_authoritative(self) -> bool:
        """True when the answer says exactly which domains the user administers."""
        return self.kind is AnswerKind.AUTHORITATIVE

    @property
    def fingerprint(self) -> str:
        """A digest of the domain list, equal for equal authoritative answers."""
        if not self.is_authoritative:
            return ""
        return hashlib.sha256("\n".join(self.domains).encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able form, for the shared cache (which sets `cache` when it reads it back)."""
        return {
            "kind": str(self.kind),
            "domains": list(self.domains),
            "error_code": self.error_code,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, cache: CacheStatus) -> "UpstreamAnswer":
        """Rebuild an answer stored by `as_dict`, served from the cache as `cache`."""
        return cls(AnswerKind(data["kind"]), tuple(data["domains"]), data["error_code"], cache)


def normalize_domain_names(names: Iterable[str]) -> tuple[str, ...]:
    """Lower-case names, drop one trailing dot, dedupe and sort; ValueError on any bad name.

    One bad name rejects the whole list: a list we cannot fully read is not trusted to revoke.
    IDNs must come in their ASCII (xn--) form, as MailDomain stores them; only ASCII letters
    are lowered, so no non-ASCII character can turn into an ASCII one and name another domain.
    """
    normalized = set()
    for name in names:
        if not isinstance(name, str):
            raise ValueError("a domain name is not a string")
        try:
            normalized.add(clean_domain_name(name))
        except ValidationError:
            raise ValueError("not a valid domain name") from None
    return tuple(sorted(normalized))


class EntitlementsBackend(ABC):
    """Asks one upstream which mail domains a user may administer.

    A backend is built once per process from ENTITLEMENTS_BACKEND_PARAMETERS passed as keyword
    arguments; it raises ValueError (without secrets in the text) on a bad parameter. It never
    raises for an upstream failure: it classifies it into an UpstreamAnswer.
    """

    # Calls to a remote service go through the shared circuit breaker and rate limit; a
    # backend that answers from local data sets this to False.
    guard_upstream_calls: bool = True

    @property
    def forwarded_claim_names(self) -> list[str]:
        """OIDC claims this backend needs from login (stored on the user's sync state)."""
        return []

    def forwarded_claims(self, claims: Mapping[str, Any]) -> dict[str, str]:
        """The forwarded claims of a login that have the shape this backend expects; any other
        is not stored (the upstream would find nobody with it)."""
        kept = {}
        for name in self.forwarded_claim_names:
            value = self.clean_claim(name, claims.get(name))
            if value is not None:
                kept[name] = value
        return kept

    def clean_claim(self, name: str, value: Any) -> str | None:
        """A forwarded claim as stored: a one-line string, trimmed, of 1 to 255 characters;
        None for anything else (a number, a list, an object, a control character)."""
        if not isinstance(value, str) or has_control_characters(value):
            return None
        value = value.strip()
        return value if 0 < len(value) <= MAX_CLAIM_LENGTH else None

    @abstractmethod
    def get_entitlements(self, *, user, forwarded_claims: Mapping[str, Any]) -> UpstreamAnswer:
        """Return the classified answer of the upstream for this user."""
