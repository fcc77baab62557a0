"""The ended-subscription rule: an organisation whose subscription ended loses its admin rights.

DeployCenter then answers `not_activated` without an admin list (AnswerKind.ACCESS_ENDED). The
first such answer empties the user's last entitled domains at once (provisioning grants nothing
from the old list) and records `access_ended_since`; once the answer has lasted
ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS, a resync run revokes the user's sync-made
accesses through its revocation budget. A per-user sync never revokes for it.
"""

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone

from core.entitlements.backends.base import AnswerKind, UpstreamAnswer

if TYPE_CHECKING:
    from core.entitlements.reconcile import RecordedState


def confirmed_ended(
    *,
    answers: Sequence[tuple[Any, UpstreamAnswer]],
    states: dict[Any, "RecordedState"],
    in_run: bool,
) -> set:
    """Ids of the users whose access ended upstream for the whole confirmation window.

    Only inside a run, whose revocation budget guards the revocations: a per-user sync leaves
    them to the next run. A window of 0 turns the rule off (nothing is revoked for it).
    """
    window = settings.ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS
    if not in_run or window <= 0:
        return set()
    confirmed_before = timezone.now() - timedelta(seconds=window)
    return {
        user.pk
        for user, answer in answers
        if answer.kind is AnswerKind.ACCESS_ENDED
        and (since := states[user.pk].access_ended_since) is not None
        and since <= confirmed_before
    }
