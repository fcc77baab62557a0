"""describe: the one operator message of a sync request's receipt, as the admin, the command
line and simulate_login show it."""

import uuid

from core.entitlements.receipts import RequestOutcome, SyncReceipt, describe

QUEUED, COLLAPSED, NOT_SENT = RequestOutcome


def _user(outcome: RequestOutcome, task_id: str | None = None) -> SyncReceipt:
    return SyncReceipt(outcome=outcome, task_id=task_id, user_id=uuid.uuid4())


def test_users_receipts_are_counted_one_message_per_outcome(settings):
    settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS = 10
    receipts = [_user(QUEUED, "t1"), _user(COLLAPSED), _user(QUEUED, "t2"), _user(NOT_SENT)]

    assert describe(*receipts) == [
        ("success", "Entitlements sync queued for 2 users: tasks t1, t2."),
        ("info", "1 user already had a sync queued in the last 10 s: it serves this request."),
        (
            "error",
            "The task broker cannot be reached: the sync of 1 user was not sent. The request is "
            "recorded; the sweep sends it once the broker is back.",
        ),
    ]


def test_a_single_queued_sync_names_its_task():
    [notice] = describe(_user(QUEUED, "abc"))

    assert notice == ("success", "Entitlements sync queued for 1 user: task abc.")


def test_many_task_ids_show_the_first_ten_and_count_the_rest():
    receipts = [_user(QUEUED, f"t{number}") for number in range(13)]

    [notice] = describe(*receipts)

    assert notice.text.endswith(": tasks t0, t1, t2, t3, t4, t5, t6, t7, t8, t9 and 3 more.")


def test_a_run_is_described_by_its_scope_and_says_when_it_was_not_started():
    full = SyncReceipt(outcome=QUEUED, task_id="run-1")
    domain = SyncReceipt(outcome=NOT_SENT, maildomain_name="alpha.example.org")

    assert describe(full, domain) == [
        (
            "success",
            "Full resync started: task run-1. Its run shows in the admin's sync runs once a "
            "worker takes it.",
        ),
        (
            "error",
            "The task broker cannot be reached: the resync of alpha.example.org's admins was "
            "not started. Try again later.",
        ),
    ]
    assert (full.sent, domain.sent) == (True, False)
