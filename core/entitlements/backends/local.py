"""Local backend for development and the demo: admin rights from settings or a JSON file."""

import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.entitlements.backends.base import (
    AnswerKind,
    EntitlementsBackend,
    UpstreamAnswer,
    normalize_domain_names,
)
from core.validators import normalize_email

logger = logging.getLogger(__name__)

# The error code of every answer of a backend given no mapping at all.
NO_MAPPING = "no_mapping"
_MAPPING_KEYS = frozenset({"admins_by_email", "admins_by_email_domain"})


class LocalEntitlementsBackend(EntitlementsBackend):
    """Grants access to everyone; admin domains come from an email map and an email-domain map.

    With `mapping_file`, the maps are read from that JSON file (same two keys) and re-read
    whenever the file changes, so a demo can edit it and watch rights appear and disappear.
    Given no map and no file (ENTITLEMENTS_BACKEND_PARAMETERS lost or never set), it answers
    "no information" rather than an empty list, so a lost setting never revokes anything.
    """

    guard_upstream_calls = False

    def __init__(
        self,
        *,
        admins_by_email: Mapping[str, list[str]] | None = None,
        admins_by_email_domain: Mapping[str, list[str]] | None = None,
        mapping_file: str = "",
    ):
        if mapping_file and (admins_by_email or admins_by_email_domain):
            raise ValueError("give either mapping_file or the admins_by_* maps, not both")
        self._lock = threading.Lock()
        self._mapping_file = Path(mapping_file) if mapping_file else None
        self._mapping_version: tuple[int, int] | None = None
        self._has_mapping = bool(mapping_file) or (
            admins_by_email is not None or admins_by_email_domain is not None
        )
        if not self._has_mapping:
            logger.warning(
                "local entitlements backend has no mapping: every sync answers no information"
            )
        if self._mapping_file:
            try:
                self._reload_mapping_file(self._mapping_file)
            except OSError as error:
                raise ValueError(f"mapping_file cannot be read: {error.strerror}") from None
            except ValueError as error:
                # As while running: a broken file is an invalid answer for every sync (nothing
                # is revoked) until it is fixed, not a process that cannot start.
                logger.warning(
                    "local entitlements mapping file unusable: %s; every sync ends invalid "
                    "until it is fixed",
                    error,
                )
        else:
            self._maps = _parse_mapping(
                {
                    "admins_by_email": admins_by_email or {},
                    "admins_by_email_domain": admins_by_email_domain or {},
                }
            )

    def get_entitlements(self, *, user, forwarded_claims: Mapping[str, Any]) -> UpstreamAnswer:
        """Return the union of the domains mapped to the user's email and email domain."""
        if not self._has_mapping:
            return UpstreamAnswer.failure(AnswerKind.NO_INFORMATION, NO_MAPPING)
        if self._mapping_file:
            try:
                self._reload_mapping_file(self._mapping_file)
            except (OSError, ValueError) as error:
                logger.warning("local entitlements mapping file unusable: %s", error)
                return UpstreamAnswer.failure(AnswerKind.INVALID, "mapping_file_invalid")
        by_email, by_email_domain = self._maps
        email = normalize_email(user.email)
        domains = by_email.get(email, ()) + by_email_domain.get(email.rpartition("@")[2], ())
        return UpstreamAnswer.authoritative(domains)

    def _reload_mapping_file(self, mapping_file: Path) -> None:
        """Read the mapping file again if it changed since the last read."""
        with self._lock:
            stat = os.stat(mapping_file)
            # Size too: two quick edits can share a coarse file-system timestamp.
            version = (stat.st_mtime_ns, stat.st_size)
            if version == self._mapping_version:
                return
            try:
                data = json.loads(mapping_file.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"mapping_file is not valid JSON: {error.msg} "
                    f"(line {error.lineno}, column {error.colno})"
                ) from None
            self._maps = _parse_mapping(data)
            self._mapping_version = version


def _parse_mapping(
    data: Any,
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """Check and normalise the two maps; ValueError names the faulty key."""
    if not isinstance(data, dict) or not set(data) <= _MAPPING_KEYS:
        raise ValueError(f"the mapping must be an object with keys among {sorted(_MAPPING_KEYS)}")
    by_email = {
        normalize_email(email): domains
        for email, domains in _parse_map(data.get("admins_by_email", {}), "admins_by_email")
    }
    by_email_domain = {
        email_domain.strip().lower(): domains
        for email_domain, domains in _parse_map(
            data.get("admins_by_email_domain", {}), "admins_by_email_domain"
        )
    }
    return by_email, by_email_domain


def _parse_map(value: Any, name: str) -> list[tuple[str, tuple[str, ...]]]:
    """Check one map of key -> list of domain names."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object mapping to lists of domain names")
    parsed = []
    for key, domains in value.items():
        if not isinstance(domains, list):
            raise ValueError(f"every value of {name} must be a list of domain names")
        try:
            parsed.append((key, normalize_domain_names(domains)))
        except ValueError as error:
            # The key is an email address: it stays out of the message, which may be logged.
            raise ValueError(f"an entry of {name}: {error}") from None
    return parsed
