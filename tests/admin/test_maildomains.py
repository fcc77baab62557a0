"""The admin's mail domain pages: the resync of a domain's admins starts a run on the bulk
queue, with a clear error when the broker is down."""

import pytest

from tests.support.admin_pages import (
    DOMAINS,
    act,
    shown,
)
from tests.support.broker import producer_app

ALPHA = "alpha.example.org"

pytestmark = pytest.mark.usefixtures("fast_password_hasher")


class TestResyncDomain:
    def test_starts_a_domain_run_on_the_bulk_queue_and_shows_its_id(
        self, superuser_client, domains, broker_queues
    ):
        response = act(superuser_client, DOMAINS, "resync_domain_admins", [domains[ALPHA]])

        [message] = broker_queues.messages("bulk")
        assert message["task"] == "entitlements.sync_domain_admins"
        assert message["args"] == [str(domains[ALPHA].pk), "admin"]
        assert shown(response) == [
            f"Resync of {ALPHA}'s admins started: task {message['id']}. Its run shows in the "
            "admin's sync runs once a worker takes it."
        ]

    def test_broker_down_is_a_clear_error(self, superuser_client, domains, private_redis):
        with producer_app(private_redis.url):
            response = act(superuser_client, DOMAINS, "resync_domain_admins", [domains[ALPHA]])

        assert shown(response) == [
            f"The task broker cannot be reached: the resync of {ALPHA}'s admins was not "
            "started. Try again later."
        ]
