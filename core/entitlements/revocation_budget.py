"""The revocation budget: a resync run revokes at most its budget; the rest is held for a person.

An upstream that answers an empty list for everyone is indistinguishable, user by user, from
everyone losing their rights. Over a whole run it is not: a run may revoke at most
ENTITLEMENTS_MAX_REVOKE_SHARE of the accesses the sync could revoke when it started (never
less than ENTITLEMENTS_MAX_REVOKE_MIN). Past that, the run's revocations are held: the
accesses stay, a HeldRevocation row records each, an error is logged, and an operator
releases them (each re-checked against the user's last answer) or discards them
(held_revocations.py).

While any revocation a run held waits for an operator, every new run starts with a budget of
zero: a bad upstream day lasting many runs cannot revoke a budget's worth at each of them.
Per-user syncs (login, admin, command, sweep) are never held by a budget: one user's fresh
answer is authoritative for that user (except right after their e-mail changed: identity.py).
"""

import logging
import math
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, QuerySet, Value, When

from core import metrics
from core.models import HeldRevocation, MailDomainAccess, SyncRun
from core.selectors import pending_held_revocations

logger = logging.getLogger(__name__)

HELD_ERROR_CODE = "revocations_held"


@dataclass(frozen=True, slots=True)
class RunBudget:
    """What a new run may revoke: `revoke_budget` of its `revocable_accesses`."""

    revocable_accesses: int
    revoke_budget: int


def revocable_accesses() -> QuerySet:
    """The accesses a sync may revoke: those it created, or every ADMIN row in strict mode."""
    accesses = MailDomainAccess.objects.filter(role=MailDomainAccess.Role.ADMIN)
    if settings.ENTITLEMENTS_STRICT_MODE:
        return accesses
    return accesses.filter(source=MailDomainAccess.Source.ENTITLEMENTS)


def new_run_budget() -> RunBudget:
    """The revocation budget of a run starting now (zero while held revocations are pending)."""
    revocable = revocable_accesses().count()
    # A user's identity hold is that user's matter: it does not stop every later run.
    if pending_held_revocations().filter(reason=HeldRevocation.Reason.RUN_BUDGET).exists():
        return RunBudget(revocable_accesses=revocable, revoke_budget=0)
    share = math.floor(settings.ENTITLEMENTS_MAX_REVOKE_SHARE * revocable)
    return RunBudget(
        revocable_accesses=revocable,
        revoke_budget=max(settings.ENTITLEMENTS_MAX_REVOKE_MIN, share),
    )


class RunRevocationBudget:
    """The reconcile's revocation budget for the syncs of one run's batches.

    Called inside each user's reconcile transaction, so the reservation on the run's row
    commits or rolls back with the revocations it allowed: every batch of the run, in any
    process, draws from one budget and the sum never exceeds it. The threads of a batch may
    share one. Nothing is queried for a user who loses no access.
    """

    def __init__(self, *, run_id: int):
        self.run_id = run_id
        # Once this run is seen holding, it holds for good: skip the reservation attempt.
        self._holding = False

    def __call__(self, *, user, maildomain_names: list[str]) -> bool:
        """True: revoke these accesses now. False: they are held (recorded here)."""
        if not self._holding:
            if self._reserve(len(maildomain_names)):
                return True
            self._mark_run_holding()
            self._holding = True
        # A revocation already pending from an earlier run keeps its row (unique while pending).
        HeldRevocation.objects.bulk_create(
            [
                HeldRevocation(run_id=self.run_id, user=user, maildomain_name=name)
                for name in maildomain_names
            ],
            ignore_conflicts=True,
        )
        transaction.on_commit(partial(metrics.revocations_held, count=len(maildomain_names)))
        return False

    def admit_batch(self, *, count: int) -> bool:
        """Reserve `count` revocations at once: all of a batch reconcile's, one UPDATE.

        False changes nothing: the reconcile then asks user by user (__call__), so what is
        left of the budget is still used and the rest held, exactly as one by one.
        """
        return not self._holding and self._reserve(count)

    def _reserve(self, count: int) -> bool:
        """Take `count` from the run's budget in one conditional UPDATE; False if it is spent.

        The UPDATE locks the run's row until the reconcile commits: a concurrent reservation
        waits, then re-reads the new total (PostgreSQL re-checks the WHERE clause).
        """
        return bool(
            SyncRun.objects.filter(
                pk=self.run_id,
                budget_reached=False,
                accesses_revoked__lte=F("revoke_budget") - count,
            ).update(accesses_revoked=F("accesses_revoked") + count)
        )

    def _mark_run_holding(self) -> None:
        """Flag the run as holding; the reconcile that flags it reports it once committed."""
        flagged = SyncRun.objects.filter(pk=self.run_id, budget_reached=False).update(
            budget_reached=True,
            error_code=Case(
                When(error_code="", then=Value(HELD_ERROR_CODE)), default=F("error_code")
            ),
        )
        if flagged:
            transaction.on_commit(partial(_report_held_run, run_id=self.run_id))


def _report_held_run(*, run_id: int) -> None:
    """Log (Sentry gets it) that a run started holding revocations; counts only, no person."""
    run = SyncRun.objects.filter(pk=run_id).values(
        "revocable_accesses", "revoke_budget", "accesses_revoked"
    )[0]
    earlier = (
        pending_held_revocations()
        .filter(reason=HeldRevocation.Reason.RUN_BUDGET)
        .exclude(run_id=run_id)
        .exists()
    )
    logger.error(
        "resync run %s reached its revocation budget (%s revoked, budget %s of %s revocable "
        "accesses%s): its further revocations are held until an operator releases or "
        "discards them",
        run_id,
        run["accesses_revoked"],
        run["revoke_budget"],
        run["revocable_accesses"],
        "; held revocations of an earlier run are pending" if earlier else "",
    )
