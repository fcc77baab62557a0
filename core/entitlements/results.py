"""A sync's result and the words for it: the sync status an answer records, the run category."""

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from core.entitlements.backends.base import AnswerKind, CacheStatus
from core.models import FAILED_SYNC_STATUSES, EntitlementSyncState

Status = EntitlementSyncState.Status

# Error code of a sync skipped because another sync of the user held their lock.
LOCKED = "locked"

# The one translation from an answer kind to the sync status it records (the glossary in
# docs/entitlements.md); the statuses missing here come from the sync's bookkeeping.
SYNC_STATUS_BY_ANSWER_KIND = {
    AnswerKind.AUTHORITATIVE: Status.OK,
    AnswerKind.NO_INFORMATION: Status.NO_INFORMATION,
    AnswerKind.ACCESS_ENDED: Status.ACCESS_ENDED,
    AnswerKind.INVALID: Status.INVALID,
    AnswerKind.BAD_REQUEST: Status.ERROR,
    AnswerKind.NOT_ASKED: Status.SKIPPED,
    AnswerKind.CONFIGURATION_ERROR: Status.ERROR,
    AnswerKind.UNAVAILABLE: Status.UNAVAILABLE,
}


class RunCategory(enum.StrEnum):
    """How one user's sync counts in a run: the run's counter it adds to (`SyncRun.users_*`)."""

    DONE = "done"
    # Done, and an access was granted or revoked (counted in `users_done` too).
    CHANGED = "changed"
    FAILED = "failed"
    # Not synced and not a failure: the user could not be asked, or another sync had them.
    SKIPPED = "skipped"
    # Not asked: the run stopped (configuration error) before this user's turn. Their state
    # stays as it was.
    NOT_RUN = "not_run"


@dataclass(slots=True)
class SyncResult:
    """What one sync did, small and JSON-able (no email, no claim value)."""

    user_id: str
    trigger: str
    status: str
    error_code: str = ""
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    cache: CacheStatus = "miss"
    held: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when an access was granted or revoked."""
        return bool(self.added or self.removed)

    @property
    def run_category(self) -> RunCategory:
        """How the sync counts in its run: a user who could not be asked is skipped."""
        if self.status in FAILED_SYNC_STATUSES:
            return RunCategory.FAILED
        if self.status == Status.SKIPPED:
            return RunCategory.SKIPPED
        return RunCategory.CHANGED if self.changed else RunCategory.DONE

    @property
    def worth_retrying(self) -> bool:
        """Whether another try later may do what this sync could not: the upstream was down,
        or another sync of the user held their lock (one that does not serve the request)."""
        return self.status == Status.UNAVAILABLE or (
            self.status == Status.SKIPPED and self.error_code == LOCKED
        )

    def as_dict(self) -> dict[str, Any]:
        """The result as a task returns it."""
        return {**asdict(self), "changed": self.changed}
