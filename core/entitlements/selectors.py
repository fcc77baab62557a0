"""Read-only queries over the sync bookkeeping."""

from collections.abc import Iterable

from django.db import connections, router
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from core.models import EntitlementSyncState


def users_entitled_to(name: str) -> QuerySet:
    """Ids of the users whose last authoritative answer named the domain `name`."""
    return states_entitled_to_any([name]).values_list("user_id", flat=True)


def states_entitled_to_any(names: Iterable[str]) -> QuerySet:
    """Sync states whose last authoritative answer named at least one of `names`."""
    names = sorted(set(names))
    states = EntitlementSyncState.objects.all()
    if connections[router.db_for_read(EntitlementSyncState)].vendor == "postgresql":
        # jsonb ?| matches string elements of a top-level array.
        return states.filter(entitled_domains__has_any_keys=names)
    # SQLite has no JSON containment lookup: match the quoted name in the stored JSON text.
    # Exact, because domain names hold no character that JSON escapes. Callers pass at most
    # a few hundred names (SQLite caps the depth of an OR chain at 1000).
    condition = Q()
    for name in names:
        condition |= Q(entitled_domains_text__contains=f'"{name}"')
    return states.alias(entitled_domains_text=Cast("entitled_domains", TextField())).filter(
        condition
    )
