"""Who may trigger what in the admin: the resync and release permissions, for staff and others."""

import pytest
from django.test import Client
from django.urls import reverse

from tests.support.admin_pages import (
    DOMAINS,
    HELD,
    RESYNC_ALL,
    RUNS,
    USERS,
    act,
    action_names,
)

pytestmark = pytest.mark.usefixtures("fast_password_hasher")


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
