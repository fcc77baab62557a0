"""The admin's user pages: the resync action queues one sync per user on the Redis broker,
within its limit, with a clear error when the broker is down."""

import re

import pytest

from core.models import (
    EntitlementSyncState,
    MailDomainAccess,
)
from tests.support.admin_pages import (
    USERS,
    act,
    shown,
)
from tests.support.broker import producer_app

ALPHA = "alpha.example.org"
SYNC = MailDomainAccess.Source.ENTITLEMENTS

pytestmark = pytest.mark.usefixtures("fast_password_hasher")


class TestResyncUsers:
    def test_queues_one_sync_per_user_on_the_broker_and_shows_the_task_ids(
        self, superuser_client, make_user, broker_queues
    ):
        alice, bob = make_user(), make_user()

        response = act(superuser_client, USERS, "resync_entitlements", [alice, bob])

        queued = broker_queues.messages("interactive")
        assert sorted(message["args"] for message in queued) == sorted(
            [[str(alice.pk), "admin"], [str(bob.pk), "admin"]]
        )
        assert {message["task"] for message in queued} == {"entitlements.sync_user"}
        [text] = shown(response)
        assert text.startswith("Entitlements sync queued for 2 users: tasks ")
        assert all(message["id"] in text for message in queued)
        assert EntitlementSyncState.objects.get(user=alice).last_trigger == "admin"

    def test_the_sync_runs_on_the_worker(
        self,
        superuser_client,
        celery_worker,
        celery_app,
        broker_queues,
        domains,
        make_user,
        scripted_upstream,
    ):
        alice = make_user()
        scripted_upstream(admins_by_email={alice.email: [ALPHA]})

        [text] = shown(act(superuser_client, USERS, "resync_entitlements", [alice]))
        task_id = re.search(r"task (\S+)\.$", text).group(1)
        result = celery_app.AsyncResult(task_id).get(timeout=20)

        assert (result["trigger"], result["added"]) == ("admin", [ALPHA])
        assert MailDomainAccess.objects.filter(user=alice, source=SYNC).count() == 1
        assert EntitlementSyncState.objects.get(user=alice).last_task_id == task_id

    def test_a_request_inside_the_dedup_window_is_served_by_the_queued_task(
        self, superuser_client, make_user, broker_queues
    ):
        alice = make_user()
        act(superuser_client, USERS, "resync_entitlements", [alice])

        response = act(superuser_client, USERS, "resync_entitlements", [alice])

        assert shown(response) == [
            "1 user already had a sync queued in the last 10 s: it serves this request."
        ]
        assert broker_queues.length("interactive") == 1

    def test_broker_down_says_the_request_is_recorded_for_the_sweep(
        self, superuser_client, make_user, private_redis
    ):
        alice = make_user()

        with producer_app(private_redis.url):  # never started: the broker is down
            response = act(superuser_client, USERS, "resync_entitlements", [alice])

        assert response.status_code == 200
        assert shown(response) == [
            "The task broker cannot be reached: the sync of 1 user was not sent. The "
            "request is recorded; the sweep sends it once the broker is back."
        ]
        state = EntitlementSyncState.objects.get(user=alice)
        assert (state.requested_at is not None, state.enqueued_at) == (True, None)

    def test_a_big_selection_is_refused_with_the_way_to_go(
        self, superuser_client, make_user, broker_queues, monkeypatch
    ):
        monkeypatch.setattr("core.admin.users.MAX_USERS_PER_RESYNC_ACTION", 2)
        users = [make_user() for _ in range(3)]

        response = act(superuser_client, USERS, "resync_entitlements", users)

        assert shown(response) == [
            "Select at most 2 users, or start a full resync (Sync runs, Resync all admins)."
        ]
        assert broker_queues.length("interactive") == 0
