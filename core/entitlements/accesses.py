"""The one place that grants and revokes sync-made ADMIN accesses, each with its audit row.

The reconcile, the provisioning grant and the release of held revocations all write through
here, so every access the sync makes or removes leaves exactly one audit row.
"""

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, NamedTuple

from django.db import transaction

from core import metrics
from core.chunks import chunked
from core.models import AccessAuditEntry, MailDomain, MailDomainAccess, Trigger
from core.selectors import states_entitled_to_any
from core.sql_rows import insert_rows

# Domains granted per transaction by the provisioning grant (SQLite's OR-depth limit).
_GRANT_CHUNK = 200


class Grant(NamedTuple):
    """An ADMIN access to create: who, on which domain (by id, and by name for the trail)."""

    user_id: Any
    maildomain_id: Any
    maildomain_name: str


class Revocation(NamedTuple):
    """An access to delete: whose, which row, and the domain's name for the trail."""

    user_id: Any
    access_id: Any
    maildomain_name: str


def grant_accesses(*, grants: Iterable[Grant], trigger: Trigger, task_id: str = "") -> None:
    """Create sync-made ADMIN accesses and their audit rows: two statements at most."""
    change_accesses(grants=grants, trigger=trigger, task_id=task_id)


def revoke_accesses(
    *, revocations: Iterable[Revocation], trigger: Trigger, task_id: str = ""
) -> None:
    """Delete accesses and write their audit rows: two statements at most."""
    change_accesses(revocations=revocations, trigger=trigger, task_id=task_id)


def change_accesses(
    *,
    grants: Iterable[Grant] = (),
    revocations: Iterable[Revocation] = (),
    trigger: Trigger,
    task_id: str = "",
) -> None:
    """Create and delete accesses, with an audit row each: three statements at most.

    The rows are written as plain rows (core/sql_rows.py), not model instances: building
    those was most of the CPU of a batch's writes.
    """
    grants, revocations = list(grants), list(revocations)
    if grants:
        insert_rows(
            MailDomainAccess,
            [
                {
                    "user_id": grant.user_id,
                    "maildomain_id": grant.maildomain_id,
                    "role": MailDomainAccess.Role.ADMIN,
                    "source": MailDomainAccess.Source.ENTITLEMENTS,
                }
                for grant in grants
            ],
            # A row made by hand at this very moment wins: the sync never fails on it.
            ignore_conflicts=True,
        )
    if revocations:
        MailDomainAccess.objects.filter(id__in=[item.access_id for item in revocations]).delete()
    trail = [(grant, AccessAuditEntry.Action.GRANTED) for grant in grants] + [
        (revocation, AccessAuditEntry.Action.REVOKED) for revocation in revocations
    ]
    if not trail:
        return
    insert_rows(
        AccessAuditEntry,
        [
            {
                "user_id": item.user_id,
                "maildomain_name": item.maildomain_name,
                "action": action,
                "trigger": trigger,
                "task_id": task_id,
            }
            for item, action in trail
        ],
    )
    transaction.on_commit(
        partial(
            metrics.accesses_changed,
            granted=len(grants),
            revoked=len(revocations),
            trigger=trigger,
        )
    )


def grant_accesses_for_new_domains(
    *, maildomains: Iterable[MailDomain], trigger: Trigger = Trigger.PROVISIONING
) -> int:
    """Grant ADMIN access on new domains to users whose last answer named them; return count.

    A provisioned domain gets its admins at once instead of at their next sync.
    """
    domains = {domain.name: domain for domain in maildomains}
    granted = 0
    for names in chunked(sorted(domains), _GRANT_CHUNK):
        with transaction.atomic():
            granted += _grant_chunk({name: domains[name] for name in names}, trigger=trigger)
    return granted


def _grant_chunk(domains: Mapping[str, MailDomain], *, trigger: Trigger) -> int:
    """Grant one chunk of domains; states are locked so no sync of these users runs meanwhile."""
    # Locked in user order, so two grants over overlapping users cannot deadlock.
    entitled = states_entitled_to_any(domains).select_for_update().order_by("user_id")
    pairs = {
        (user_id, name)
        for user_id, names in entitled.values_list("user_id", "entitled_domains")
        for name in domains.keys() & set(names)
    }
    if not pairs:
        return 0
    existing = set(
        MailDomainAccess.objects.filter(
            user_id__in={user_id for user_id, _ in pairs}, maildomain__in=domains.values()
        ).values_list("user_id", "maildomain__name")
    )
    new = sorted(pairs - existing)
    grant_accesses(
        grants=[Grant(user_id, domains[name].pk, name) for user_id, name in new], trigger=trigger
    )
    return len(new)
