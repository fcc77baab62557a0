"""Reconciling with a run's revocation budget, as the revocation tests do."""

from core.entitlements.backends.base import UpstreamAnswer
from core.entitlements.reconcile import reconcile_admin_accesses
from core.models import MailDomainAccess, SyncRun


def names_of(user) -> set[str]:
    """The names of the domains the user holds an access on."""
    accesses = MailDomainAccess.objects.filter(user=user)
    return set(accesses.values_list("maildomain__name", flat=True))


def reconcile(user, *names, guard=None, trigger="periodic"):
    """Reconcile the user against an authoritative answer naming `names`."""
    return reconcile_admin_accesses(
        user=user,
        answer=UpstreamAnswer.authoritative(names),
        trigger=trigger,
        revocation_budget=guard,
    )


def run_with_budget(budget: int) -> SyncRun:
    """A periodic run allowed `budget` revocations."""
    return SyncRun.objects.create(trigger="periodic", revoke_budget=budget, revocable_accesses=99)
