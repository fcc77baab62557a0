"""The identity rule: an answer that empties a user's rights right after their e-mail changed waits.

DeployCenter finds a user by the exact e-mail we send (domain part lower-cased, local part as
stored). A changed e-mail, even by the case of one letter, can find nobody, and "nobody" is an
authoritative empty list. So each state records a digest of the e-mail sent with the last
authoritative answer it applied; a sync whose e-mail differs from it and whose answer would
remove every sync-made access of the user holds those revocations for an operator instead.
"""

import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from core.models import HeldRevocation
from core.validators import normalize_email

if TYPE_CHECKING:
    from core.entitlements.reconcile import RecordedState

logger = logging.getLogger(__name__)

IDENTITY_CHANGED = HeldRevocation.Reason.IDENTITY_CHANGED.value


def upstream_identity(email: str) -> str:
    """A digest of the e-mail as the upstream is asked (normalised): no e-mail is stored twice."""
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()


def loses_everything_after_identity_change(
    *, recorded_identity: str, email: str, revoked: int, revocable: int
) -> bool:
    """Whether an answer revoking `revoked` of the user's `revocable` accesses must be held.

    Only when it revokes them all and the e-mail sent differs from the one recorded with the
    last applied answer; a first sync (nothing recorded yet) is never held.
    """
    return (
        bool(recorded_identity)
        and revoked > 0
        and revoked == revocable
        and recorded_identity != upstream_identity(email)
    )


def hold_revocations_after_identity_change(
    *,
    answers: Sequence[tuple[Any, Any]],
    plans: Sequence[Any],
    states: dict[Any, "RecordedState"],
) -> None:
    """Move to `held` every revocation of a user who would lose them all after an e-mail change.

    `plans` are the reconcile's, one per answer; those it holds are marked `identity_held`,
    for the reconcile to record (hold_identity_revocations) and the dry run to show.
    """
    for (user, answer), plan in zip(answers, plans, strict=True):
        if answer.is_authoritative and loses_everything_after_identity_change(
            recorded_identity=states[user.pk].upstream_identity,
            email=user.email,
            revoked=len(plan.to_remove),
            revocable=plan.revocable,
        ):
            plan.held, plan.to_remove = plan.to_remove, {}
            plan.identity_held = True


def hold_identity_revocations(*, user, maildomain_names: Iterable[str]) -> None:
    """Record the revocations held for an operator, and say so once (no e-mail in the log)."""
    names = sorted(maildomain_names)
    # A hold still pending from an earlier sync keeps its row (unique while pending).
    HeldRevocation.objects.bulk_create(
        [
            HeldRevocation(user=user, maildomain_name=name, reason=IDENTITY_CHANGED)
            for name in names
        ],
        ignore_conflicts=True,
    )
    logger.warning(
        "sync of user %s: the e-mail sent upstream changed since the last applied answer, and "
        "this answer would remove all %d of their sync-made accesses: the revocations are held "
        "until an operator releases or discards them (check the user's e-mail here and in the "
        "entitlements service)",
        user.pk,
        len(names),
    )
