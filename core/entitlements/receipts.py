"""What became of a request for a sync, and the one way an operator is told about it.

Every request (a user's sync, a full resync, a domain's resync) returns a `SyncReceipt` and
never raises for a broker that cannot be reached; the admin, the command line and
`simulate_login` show what `describe` says of it.
"""

import enum
import uuid
from dataclasses import dataclass
from typing import NamedTuple

from django.conf import settings
from django.utils.translation import ngettext

# Task ids listed in a message; the rest are counted.
_MAX_IDS_SHOWN = 10


class RequestOutcome(enum.StrEnum):
    """What became of one request for a sync."""

    # A task of its own carries it (sent, or sent when the transaction commits).
    QUEUED = "queued"
    # A task queued moments ago for the same user, not started yet, serves it.
    COLLAPSED = "collapsed"
    # The broker could not be reached. A user's request stays recorded (the sweep sends it
    # later); a resync is not started (a person asked for it and tries again).
    NOT_SENT = "not_sent"


@dataclass(slots=True)
class SyncReceipt:
    """The answer of a request for a sync; final once the caller's transaction has committed.

    A user's sync carries `user_id`; a resync run carries `maildomain_name` for one domain's
    admins, nothing for every admin.
    """

    outcome: RequestOutcome
    task_id: str | None = None
    user_id: uuid.UUID | None = None
    maildomain_name: str = ""

    @property
    def sent(self) -> bool:
        """Whether a task carries the request (its own, or one queued moments ago)."""
        return self.outcome != RequestOutcome.NOT_SENT


class Notice(NamedTuple):
    """One message for an operator, at a level named as Django's messages name theirs."""

    level: str  # "success", "info", or "error" for a request that was not sent
    text: str


_LEVELS = {
    RequestOutcome.QUEUED: "success",
    RequestOutcome.COLLAPSED: "info",
    RequestOutcome.NOT_SENT: "error",
}


def describe(*receipts: SyncReceipt) -> list[Notice]:
    """The operator's messages for these receipts: one per outcome for users' syncs (counted),
    one per resync run."""
    notices = []
    for outcome in RequestOutcome:
        users = [r for r in receipts if r.user_id is not None and r.outcome == outcome]
        if users:
            notices.append(Notice(_LEVELS[outcome], _users_text(outcome, users)))
    notices += [
        Notice(_LEVELS[receipt.outcome], _run_text(receipt))
        for receipt in receipts
        if receipt.user_id is None
    ]
    return notices


def _users_text(outcome: RequestOutcome, receipts: list[SyncReceipt]) -> str:
    users = _counted(len(receipts), "user", "users")
    if outcome == RequestOutcome.QUEUED:
        task_ids = [str(receipt.task_id) for receipt in receipts]
        tasks = ngettext("task", "tasks", len(task_ids))
        return f"Entitlements sync queued for {users}: {tasks} {_task_ids_text(task_ids)}."
    if outcome == RequestOutcome.COLLAPSED:
        return (
            f"{users} already had a sync queued in the last "
            f"{settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS} s: it serves this request."
        )
    return (
        f"The task broker cannot be reached: the sync of {users} was not sent. The request "
        "is recorded; the sweep sends it once the broker is back."
    )


def _run_text(receipt: SyncReceipt) -> str:
    what = (
        f"resync of {receipt.maildomain_name}'s admins"
        if receipt.maildomain_name
        else "full resync"
    )
    if receipt.sent:
        return (
            f"{what[0].upper()}{what[1:]} started: task {receipt.task_id}. Its run shows in the "
            "admin's sync runs once a worker takes it."
        )
    return f"The task broker cannot be reached: the {what} was not started. Try again later."


def _counted(count: int, singular: str, plural: str) -> str:
    """'1 user', '2 users'."""
    return f"{count} {ngettext(singular, plural, count)}"


def _task_ids_text(task_ids: list[str]) -> str:
    """Task ids for a message: all of a few, the first ones of many."""
    shown = ", ".join(task_ids[:_MAX_IDS_SHOWN])
    more = len(task_ids) - _MAX_IDS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown
