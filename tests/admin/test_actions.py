"""The admin's manual triggers, through the admin client, to real tasks on the test Redis broker
(and the in-process worker where the sync must run): resync users, a domain, everyone; who may do
it; what the pages show."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomainAccess,
    SyncRun,
)
from tests.support.admin_pages import act, action_names, shown
from tests.support.broker import producer_app

ALPHA, BETA = "alpha.example.org", "beta.example.org"
SYNC = MailDomainAccess.Source.ENTITLEMENTS
USERS = reverse("admin:core_user_changelist")
DOMAINS = reverse("admin:core_maildomain_changelist")
RUNS = reverse("admin:core_syncrun_changelist")
HELD = reverse("admin:core_heldrevocation_changelist")
RESYNC_ALL = reverse("admin:core_syncrun_resync_all")


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


class TestResyncDomain:
    def test_starts_a_domain_run_on_the_bulk_queue_and_shows_its_id(
        self, superuser_client, domains, broker_queues
    ):
        response = act(superuser_client, DOMAINS, "resync_domain_admins", [domains[ALPHA]])

        [message] = broker_queues.messages("bulk")
        assert message["task"] == "entitlements.sync_domain_admins"
        assert message["args"] == [str(domains[ALPHA].pk), "admin"]
        assert shown(response) == [f"Resync of {ALPHA}'s admins started: task {message['id']}."]

    def test_broker_down_is_a_clear_error(self, superuser_client, domains, private_redis):
        with producer_app(private_redis.url):
            response = act(superuser_client, DOMAINS, "resync_domain_admins", [domains[ALPHA]])

        assert shown(response) == [
            f"The task broker cannot be reached: the resync of {ALPHA}'s admins was not "
            "started. Try again later."
        ]


class TestResyncAll:
    def test_the_button_leads_to_a_form_that_starts_the_full_run(
        self, superuser_client, broker_queues
    ):
        changelist = superuser_client.get(RUNS).content.decode()
        form = superuser_client.get(RESYNC_ALL)

        assert f'href="{RESYNC_ALL}"' in changelist
        assert form.status_code == 200
        assert 'name="csrfmiddlewaretoken"' in form.content.decode()
        response = superuser_client.post(RESYNC_ALL, follow=True)

        [message] = broker_queues.messages("bulk")
        assert (message["task"], message["args"]) == ("entitlements.sync_all_admins", ["admin"])
        assert response.redirect_chain == [(RUNS, 302)]
        assert shown(response) == [
            f"Full resync started: task {message['id']}. Its run shows here once a worker takes it."
        ]

    def test_the_run_it_starts_shows_in_the_changelist(
        self, superuser_client, celery_worker, celery_app, broker_queues, scripted_upstream
    ):
        [text] = shown(superuser_client.post(RESYNC_ALL, follow=True))
        task_id = re.search(r"task (\S+)\. ", text).group(1)
        totals = celery_app.AsyncResult(task_id).get(timeout=20)

        run = SyncRun.objects.get(pk=totals["run_id"])
        assert (run.trigger, run.scope) == ("admin", "all")
        assert superuser_client.get(RUNS).context["cl"].result_list[0] == run

    def test_a_post_without_the_csrf_token_is_refused(self, transactional_db, admin_user):
        browser = Client(enforce_csrf_checks=True)
        browser.force_login(admin_user)

        assert browser.post(RESYNC_ALL).status_code == 403

    def test_broker_down_is_a_clear_error(self, superuser_client, private_redis):
        with producer_app(private_redis.url):
            response = superuser_client.post(RESYNC_ALL, follow=True)

        assert shown(response) == [
            "The task broker cannot be reached: the full resync was not started. Try again later."
        ]


class TestPermissions:
    def test_staff_without_the_permission_gets_no_trigger(
        self, staff_client, make_user, domains, broker_queues
    ):
        client = staff_client()
        alice = make_user()

        assert "resync_entitlements" not in action_names(client, USERS)
        assert "resync_domain_admins" not in action_names(client, DOMAINS)
        assert f'href="{RESYNC_ALL}"' not in client.get(RUNS).content.decode()
        assert client.get(RESYNC_ALL).status_code == 403
        assert client.post(RESYNC_ALL).status_code == 403
        act(client, USERS, "resync_entitlements", [alice])
        assert broker_queues.length("interactive") == broker_queues.length("bulk") == 0

    def test_staff_with_the_permission_may(self, staff_client, make_user, broker_queues):
        client = staff_client("request_resync")

        assert "resync_entitlements" in action_names(client, USERS)
        assert client.get(RESYNC_ALL).status_code == 200
        act(client, USERS, "resync_entitlements", [make_user()])
        assert broker_queues.length("interactive") == 1

    def test_non_staff_are_sent_to_the_login_page(self, transactional_db, make_user, broker_queues):
        client = Client()
        client.force_login(make_user())

        response = client.post(RESYNC_ALL)

        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
        assert broker_queues.length("bulk") == 0

    def test_releasing_needs_its_own_permission(self, staff_client):
        assert not {"release_held", "discard_held"} & action_names(staff_client(), RUNS)
        assert {"release_held", "discard_held"} <= action_names(
            staff_client("release_heldrevocation"), HELD
        )


class TestPages:
    def test_runs_show_newest_first_with_progress_and_revocations(self, superuser_client):
        older = SyncRun.objects.create(trigger="periodic", status="done", users_enqueued=2)
        newer = SyncRun.objects.create(
            trigger="admin",
            users_enqueued=4,
            users_done=2,
            users_failed=1,
            revocable_accesses=1000,
            revoke_budget=100,
            accesses_revoked=100,
            revocations_held=True,
        )

        response = superuser_client.get(RUNS)

        assert list(response.context["cl"].result_list) == [newer, older]
        page = response.content.decode()
        assert "3/4 (75 %)" in page
        assert "revoked 100 of budget 100 (1000 revocable), the rest held" in page

    def test_claim_values_show_to_superusers_only(
        self, superuser_client, staff_client, make_user, scripted_upstream
    ):
        scripted_upstream(claims=["siret"])
        alice = make_user()
        EntitlementSyncState.objects.create(
            user=alice, forwarded_claims={"siret": "12345678900017"}
        )
        staff = staff_client("view_entitlementsyncstate")
        user_page = reverse("admin:core_user_change", args=[alice.pk])
        state_page = reverse("admin:core_entitlementsyncstate_change", args=[alice.pk])

        for page in (user_page, state_page):
            staff_view = staff.get(page).content.decode()
            superuser_view = superuser_client.get(page).content.decode()
            assert "siret (the backend forwards: siret)" in staff_view
            assert "12345678900017" not in staff_view
            assert "siret=12345678900017 (the backend forwards: siret)" in superuser_view

    def test_user_page_shows_the_latest_audit_rows_and_pending_held_revocations(
        self, superuser_client, held
    ):
        user = held["users"][0]
        AccessAuditEntry.objects.create(
            user=user, maildomain_name=BETA, action="granted", trigger="login", task_id="t-1"
        )

        page = superuser_client.get(reverse("admin:core_user_change", args=[user.pk]))

        text = page.content.decode()
        assert "1 access change by the sync" in text
        assert "<td>granted</td><td>beta.example.org</td><td>login</td><td>t-1</td>" in text
        assert f"{HELD}?user__id__exact={user.pk}" in text
        assert "1 pending</a>: alpha.example.org" in text

    def test_held_revocations_render(self, superuser_client, held):
        changelist = superuser_client.get(HELD, {"run__id__exact": held["run"].pk})
        change = superuser_client.get(
            reverse("admin:core_heldrevocation_change", args=[HeldRevocation.objects.first().pk])
        )

        assert changelist.context["cl"].result_count == 3
        assert change.status_code == 200
        run_page = superuser_client.get(reverse("admin:core_syncrun_change", args=[held["run"].pk]))
        assert "3 held revocations, 3 pending" in run_page.content.decode()
