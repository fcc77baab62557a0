"""Provisioning of mail domains on behalf of DeployCenter: create missing, update existing."""

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from core.entitlements import grant_accesses_for_new_domains
from core.models import MailDomain, Trigger
from core.validators import clean_domain_name, normalize_domain_name

logger = logging.getLogger(__name__)

# The same text for every refused name: the caller learns which name, never why in detail,
# and no exception message can leak through it.
INVALID_DOMAIN_NAME = "invalid domain name"


@dataclass(frozen=True)
class ProvisioningError:
    """One name that was not provisioned, and a generic reason."""

    domain: str
    error: str


@dataclass
class ProvisioningResult:
    """What one provisioning call did, names in the order the caller gave them."""

    created: list[MailDomain] = field(default_factory=list)
    existing: list[MailDomain] = field(default_factory=list)
    errors: list[ProvisioningError] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The API's answer: names only."""
        return {
            "created": [maildomain.name for maildomain in self.created],
            "existing": [maildomain.name for maildomain in self.existing],
            "errors": [{"domain": error.domain, "error": error.error} for error in self.errors],
        }


def provision_maildomains(
    *, names: Iterable[str], custom_attributes: dict | None
) -> ProvisioningResult:
    """Create the missing domains and set `custom_attributes` on every named domain.

    Names are normalised (whitespace, ASCII case, one trailing dot) and de-duplicated;
    invalid ones are reported in `errors`. `custom_attributes=None` leaves existing domains'
    attributes untouched (new ones get `{}`). Idempotent: a repeated call writes nothing, not
    even `updated_at`. Safe against a concurrent call naming the same domains: a domain the
    other call created counts as existing. Users whose last entitlements answer named a created
    domain get its ADMIN access.
    """
    valid_names, errors = _normalise_names(names)
    with transaction.atomic():
        existing = {d.name: d for d in MailDomain.objects.filter(name__in=valid_names)}
        candidates = [
            MailDomain(name=name, custom_attributes=custom_attributes or {})
            for name in valid_names
            if name not in existing
        ]
        created = _insert_missing(candidates)
        lost_race = [d.name for d in candidates if d not in created]
        existing.update({d.name: d for d in MailDomain.objects.filter(name__in=lost_race)})
        if custom_attributes is not None:
            _update_custom_attributes(existing.values(), custom_attributes)
    # Users already told upstream that they administer a new domain get it now, not at their
    # next sync (which may be an hour away).
    grant_accesses_for_new_domains(maildomains=created, trigger=Trigger.PROVISIONING)
    result = ProvisioningResult(
        created=created,
        existing=[existing[name] for name in valid_names if name in existing],
        errors=errors,
    )
    logger.info(
        "Provisioning: %d created, %d existing, %d refused",
        len(result.created),
        len(result.existing),
        len(result.errors),
    )
    return result


def _normalise_names(names: Iterable[str]) -> tuple[list[str], list[ProvisioningError]]:
    """Split names into valid normalised ones and errors, both de-duplicated, order kept."""
    valid: dict[str, None] = {}
    invalid: dict[str, None] = {}
    for raw in names:
        try:
            valid[clean_domain_name(raw.strip())] = None
        except ValidationError:
            invalid[normalize_domain_name(raw.strip())] = None
    return list(valid), [
        ProvisioningError(domain=name, error=INVALID_DOMAIN_NAME) for name in invalid
    ]


def _insert_missing(candidates: list[MailDomain]) -> list[MailDomain]:
    """Insert the candidates in one statement; return those this call really inserted."""
    if not candidates:
        return []
    # ON CONFLICT DO NOTHING: a concurrent call inserting the same name waits for ours (or we
    # for it) and then skips the row instead of failing the whole request.
    MailDomain.objects.bulk_create(candidates, ignore_conflicts=True)
    inserted_ids = set(
        MailDomain.objects.filter(id__in=[d.id for d in candidates]).values_list("id", flat=True)
    )
    return [d for d in candidates if d.id in inserted_ids]


def _update_custom_attributes(maildomains: Iterable[MailDomain], custom_attributes: dict) -> None:
    """Replace the attributes of the domains whose attributes differ, in one statement."""
    now = timezone.now()
    changed = [d for d in maildomains if d.custom_attributes != custom_attributes]
    for maildomain in changed:
        maildomain.custom_attributes = custom_attributes
        # bulk_update skips auto_now, and only a real change should move updated_at.
        maildomain.updated_at = now
    if changed:
        MailDomain.objects.bulk_update(changed, ["custom_attributes", "updated_at"])
