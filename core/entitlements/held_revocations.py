"""Held revocations: what a run's revocation budget kept back, released or discarded by a person.

Each release is re-checked, not applied blindly: see `release_held_revocations`.
"""

from dataclasses import asdict, dataclass
from functools import partial

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from core import metrics
from core.chunks import chunked
from core.entitlements.accesses import Revocation, revoke_accesses
from core.entitlements.revocation_budget import revocable_accesses
from core.models import EntitlementSyncState, HeldRevocation, Trigger

# Users whose held revocations are released per transaction (their sync states stay locked
# meanwhile, so keep it short).
_RELEASE_CHUNK = 500

Resolution = HeldRevocation.Resolution


@dataclass(slots=True)
class ReleaseReport:
    """What a release did (or, dry, would do) with the pending held revocations it covered."""

    revoked: int = 0
    kept: int = 0
    gone: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts by resolution."""
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
    for chunk in chunked(user_ids, _RELEASE_CHUNK):
        with transaction.atomic():
            _release_chunk(
                pending, user_ids=chunk, operator=operator, dry_run=dry_run, report=report
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
    revoke_accesses(
        revocations=[
            Revocation(user_id, access_ids[(user_id, name)], name) for user_id, name in revoked
        ],
        trigger=Trigger.RELEASE,
    )
    now = timezone.now()
    for resolution, row_ids in resolutions.items():
        if row_ids:
            HeldRevocation.objects.filter(id__in=row_ids).update(
                resolution=resolution, resolved_at=now, resolved_by=operator
            )
            transaction.on_commit(
                partial(
                    metrics.held_revocations_resolved, resolution=resolution, count=len(row_ids)
                )
            )


def discard_held_revocations(*, held: QuerySet, operator=None) -> int:
    """Keep the accesses of the pending revocations among `held`; return how many."""
    discarded = held.filter(resolution=Resolution.PENDING).update(
        resolution=Resolution.DISCARDED, resolved_at=timezone.now(), resolved_by=operator
    )
    metrics.held_revocations_resolved(resolution=Resolution.DISCARDED, count=discarded)
    return discarded
