"""The simulate_login command: a login without the OIDC provider, claims and sync request
included."""

import pytest
from django.core.management import CommandError

from core.models import EntitlementSyncState, User
from tests.support.commands import run


class TestSimulateLogin:
    def test_creates_the_user_stores_forwarded_claims_and_requests_a_sync(
        self, transactional_db, broker_queues, scripted_upstream
    ):
        scripted_upstream(claims=["siret"])

        out, _ = run(
            "simulate_login", "New.Person@Example.ORG", "--claim", "siret=123", "--claim", "x=y"
        )

        user = User.objects.get(email="New.Person@example.org")
        assert user.sub == "simulated:New.Person@example.org"
        state = EntitlementSyncState.objects.get(user=user)
        assert state.forwarded_claims == {"siret": "123"}
        [message] = broker_queues.messages("interactive")
        assert message["args"] == [str(user.pk), "login"]
        assert f"Entitlements sync queued for 1 user: task {message['id']}." in out

    def test_an_existing_user_keeps_their_account(
        self, transactional_db, make_user, broker_queues, scripted_upstream
    ):
        user = make_user(sub=None)

        run("simulate_login", user.email)
        run("simulate_login", user.email)

        assert User.objects.count() == 1
        user.refresh_from_db()
        assert user.sub == f"simulated:{user.email}"
        # The second login fell inside the dedup window.
        assert broker_queues.length("interactive") == 1

    @pytest.mark.parametrize(
        "value",
        [
            "not-an-email",
            "a@",
            "@example.org",
            "a b@example.org",
            "a@example.org\r\nBcc: b@example.org",
            "a\x00@example.org",
            "a@xn--zz.example.org",
        ],
        ids=repr,
    )
    def test_a_value_that_is_not_an_email_is_refused(self, transactional_db, value):
        with pytest.raises(CommandError, match="not an e-mail address"):
            run("simulate_login", value)
        assert not User.objects.exists()

    def test_malformed_claim_is_a_clear_error(self, transactional_db):
        with pytest.raises(CommandError, match="NAME=VALUE"):
            run("simulate_login", "a@example.org", "--claim", "siret")

    @pytest.mark.parametrize("name", ["Ali\x00ce", "Alice\r\nX: y"], ids=repr)
    def test_the_login_claim_policy_applies(self, transactional_db, name):
        with pytest.raises(CommandError, match="would be refused: its given_name claim"):
            run("simulate_login", "a@example.org", "--claim", f"given_name={name}")
        assert not User.objects.exists()

    def test_a_siret_of_the_wrong_shape_is_not_stored_and_said(
        self, transactional_db, broker_queues, deploycenter_backend
    ):
        _, err = run("simulate_login", "a@example\uff0eorg", "--claim", "siret=1234")

        user = User.objects.get()
        assert user.email == "a@example.org"
        assert EntitlementSyncState.objects.get(user=user).forwarded_claims == {}
        assert "Claim siret not stored: not the shape the backend expects." in err
