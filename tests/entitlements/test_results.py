"""core/entitlements/results.py: one word for each thing: the sync status each answer kind
records, and how a sync's result counts in its run."""

import pytest

from core.entitlements.backends.base import AnswerKind
from core.entitlements.results import SYNC_STATUS_BY_ANSWER_KIND, RunCategory, SyncResult
from core.models import FAILED_SYNC_STATUSES, EntitlementSyncState

Status = EntitlementSyncState.Status


def test_every_answer_kind_records_a_sync_status():
    assert set(SYNC_STATUS_BY_ANSWER_KIND) == set(AnswerKind)
    assert set(SYNC_STATUS_BY_ANSWER_KIND.values()) <= set(Status)


def _result(status, *, added=(), removed=()) -> SyncResult:
    return SyncResult(
        user_id="u", trigger="periodic", status=status, added=list(added), removed=list(removed)
    )


@pytest.mark.parametrize("status", sorted(FAILED_SYNC_STATUSES))
def test_a_failed_status_counts_failed_whatever_changed(status):
    assert _result(status, added=["a.example.org"]).run_category is RunCategory.FAILED


@pytest.mark.parametrize(
    ("result", "category"),
    [
        (_result(Status.SKIPPED), RunCategory.SKIPPED),
        (_result(Status.OK), RunCategory.DONE),
        (_result(Status.NO_INFORMATION), RunCategory.DONE),
        (_result(Status.OK, added=["a.example.org"]), RunCategory.CHANGED),
        (_result(Status.ACCESS_ENDED, removed=["a.example.org"]), RunCategory.CHANGED),
        (_result(Status.REVOCATIONS_HELD), RunCategory.DONE),
    ],
    ids=["skipped", "unchanged", "no-information", "granted", "revoked", "held"],
)
def test_a_finished_sync_counts_done_changed_or_skipped(result, category):
    assert result.run_category is category


def test_a_result_as_its_task_returns_it_says_whether_it_changed():
    result = _result(Status.OK, removed=["b.example.org"])

    assert result.as_dict() == {
        "user_id": "u",
        "trigger": "periodic",
        "status": "ok",
        "error_code": "",
        "added": [],
        "removed": ["b.example.org"],
        "unchanged": 0,
        "cache": "miss",
        "held": [],
        "changed": True,
    }
