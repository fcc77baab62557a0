"""The blast-radius guard: a resync run revokes at most its budget; the rest waits for a person.

An upstream that answers an empty list for everyone is indistinguishable, user by user, from
everyone losing their rights. Over a whole run it is not: a run may revoke at most
ENTITLEMENTS_MAX_REVOKE_SHARE of the accesses the sync could revoke when it started (never
less than ENTITLEMENTS_MAX_REVOKE_MIN). Past that, the run's revocations are held: the
accesses stay, a HeldRevocation row records each, an error is logged, and an operator
releases them (each re-checked against the user's last answer) or discards them.

While any held revocation waits for an operator, every new run starts with a budget of zero:
a bad upstream day lasting many runs cannot revoke a budget's worth at each of them.
Per-user syncs (login, admin, command, sweep) are never held: one user's fresh answer is
authoritative for that user.
"""

import logging
import math
from dataclasses import asdict, dataclass
from functools import partial

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, QuerySet, Value, When
from django.utils import timezone

from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomainAccess,
    SyncRun,
)

logger = logging.getLogger(__name__)

HELD_ERROR_CODE = "revocations_held"
RELEASE_TRIGGER = "release"
# Users whose held revocations are released per transaction (their sync states stay locked
# meanwhile, so keep it short).
_RELEASE_CHUNK = 500

Resolution = HeldRevocation.Resolution


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


def pending_held_revocations() -> QuerySet:
    """Held revocations no operator has released or discarded yet."""
    return HeldRevocation.objects.filter(resolution=Resolution.PENDING)


def new_run_budget() -> RunBudget:
    """The revocation budget of a run starting now (zero while held revocations are pending)."""
    revocable = revocable_accesses().count()
    if pending_held_revocations().exists():
        return RunBudget(revocable_accesses=revocable, revoke_budget=0)
    share = math.floor(settings.ENTITLEMENTS_MAX_REVOKE_SHARE * revocable)
    return RunBudget(
        revocable_accesses=revocable,
        revoke_budget=max(settings.ENTITLEMENTS_MAX_REVOKE_MIN, share),
    )


class RunRevocationGuard:
    """The reconcile's revocation guard for the syncs of one run's batch.

    Called inside each user's reconcile transaction, so the reservation on the run's row
    commits or rolls back with the revocations it allowed: every batch of the run, in any
    process, draws from one budget and the sum never exceeds it. The threads of a batch may
    share one guard. Nothing is queried for a user who loses no access.
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
                revocations_held=False,
                accesses_revoked__lte=F("revoke_budget") - count,
            ).update(accesses_revoked=F("accesses_revoked") + count)
        )

    def _mark_run_holding(self) -> None:
        """Flag the run as holding; the reconcile that flags it reports it once committed."""
        flagged = SyncRun.objects.filter(pk=self.run_id, revocations_held=False).update(
            revocations_held=True,
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
    earlier = pending_held_revocations().exclude(run_id=run_id).exists()
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


@dataclass(slots=True)
class ReleaseReport:
    """What a release did (or, dry, would do) with the pending held revocations it covered."""

    revoked: int = 0
    kept: int = 0
    gone: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts by outcome."""
        return asdict(self)


def release_held_revocations(
    *, held: QuerySet, operator=None, dry_run: bool = False
) -> ReleaseReport:
    """Apply the pending revocations among `held` that the users' last answers still support.

    Each is re-checked, not applied blindly: the access is revoked (with an audit row,
    trigger "release") only if it still exists, is still one the sync may revoke, and the
    user's last authoritative answer still does not name the domain; otherwise it is kept or
    was already gone. Every covered row is resolved. `dry_run` counts and writes nothing.
    """
    pending = held.filter(resolution=Resolution.PENDING)
    user_ids = sorted(set(pending.values_list("user_id", flat=True)))
    report = ReleaseReport()
    for start in range(0, len(user_ids), _RELEASE_CHUNK):
        with transaction.atomic():
            _release_chunk(
                pending,
                user_ids=user_ids[start : start + _RELEASE_CHUNK],
                operator=operator,
                dry_run=dry_run,
                report=report,
            )
    return report


def _release_chunk(
    pending: QuerySet, *, user_ids: list, operator, dry_run: bool, report: ReleaseReport
) -> None:
    """Release one chunk of users' held revocations in the current transaction."""
    # Locked in user order like the provisioning grant: no sync of these users runs meanwhile,
    # so the last answer read here is the one that stands while we revoke.
    entitled = dict(
        EntitlementSyncState.objects.select_for_update()
        .filter(user_id__in=user_ids)
        .order_by("user_id")
        .values_list("user_id", "entitled_domains")
    )
    # Locked too, and re-read: a concurrent release of the same rows waits, then skips them.
    rows = list(
        pending.filter(user_id__in=user_ids)
        .select_for_update(of=("self",))
        .values_list("id", "user_id", "maildomain_name")
    )
    access_ids = {
        (user_id, name): access_id
        for access_id, user_id, name in revocable_accesses()
        .filter(user_id__in=user_ids, maildomain__name__in={name for _, _, name in rows})
        .values_list("id", "user_id", "maildomain__name")
    }
    resolutions: dict[str, list[int]] = {value: [] for value in Resolution.values}
    revoked = []
    for row_id, user_id, name in rows:
        if (user_id, name) not in access_ids:
            resolutions[Resolution.GONE].append(row_id)
        elif name in entitled.get(user_id, ()):
            resolutions[Resolution.KEPT].append(row_id)
        else:
            resolutions[Resolution.REVOKED].append(row_id)
            revoked.append((user_id, name))
    report.revoked += len(resolutions[Resolution.REVOKED])
    report.kept += len(resolutions[Resolution.KEPT])
    report.gone += len(resolutions[Resolution.GONE])
    if dry_run:
        return
    MailDomainAccess.objects.filter(id__in=[access_ids[pair] for pair in revoked]).delete()
    AccessAuditEntry.objects.bulk_create(
        AccessAuditEntry(
            user_id=user_id,
            maildomain_name=name,
            action=AccessAuditEntry.Action.REVOKED,
            trigger=RELEASE_TRIGGER,
        )
        for user_id, name in revoked
    )
    now = timezone.now()
    for resolution, row_ids in resolutions.items():
        if row_ids:
            HeldRevocation.objects.filter(id__in=row_ids).update(
                resolution=resolution, resolved_at=now, resolved_by=operator
            )


def discard_held_revocations(*, held: QuerySet, operator=None) -> int:
    """Keep the accesses of the pending revocations among `held`; return how many."""
    return held.filter(resolution=Resolution.PENDING).update(
        resolution=Resolution.DISCARDED, resolved_at=timezone.now(), resolved_by=operator
    )
