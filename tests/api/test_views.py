"""core/api/views.py: each endpoint, through HTTP."""

from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from core.models import EntitlementSyncState, MailDomain, MailDomainAccess
from tests.api.endpoints import (
    MAILDOMAINS_URL,
    ME_URL,
    PROVISIONING_URL,
    access_url,
    accesses_url,
    post_raw,
)
from tests.factories import (
    EntitlementSyncStateFactory,
    MailDomainAccessFactory,
    MailDomainFactory,
    UserFactory,
)


class TestConfigView:
    """GET /api/v1.0/config/ exposes the feature flags to anyone."""

    @pytest.mark.parametrize("enabled", [True, False])
    def test_config_reflects_feature_flags(self, api_client, settings, enabled):
        settings.FEATURE_MAILDOMAIN_CREATE = enabled
        settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = not enabled

        response = api_client.get("/api/v1.0/config/")

        assert response.status_code == 200
        assert response.json() == {
            "FEATURE_MAILDOMAIN_CREATE": enabled,
            "FEATURE_MAILDOMAIN_MANAGE_ACCESSES": not enabled,
        }


class TestUserMeView:
    """GET /api/v1.0/users/me/: the authenticated user and their sync state."""

    def test_anonymous_is_refused(self, api_client, db):
        response = api_client.get(ME_URL)

        assert response.status_code == 403
        assert response.json() == {"detail": "Authentication credentials were not provided."}

    def test_user_without_sync_state_reads_never(self, user_client, user):
        response = user_client.get(ME_URL)

        assert response.status_code == 200
        assert response.json() == {
            "id": str(user.id),
            "email": user.email,
            "full_name": user.full_name,
            "is_staff": False,
            "sync": {"status": "never", "requested_at": None, "finished_at": None},
        }
        assert not EntitlementSyncState.objects.exists()

    @pytest.mark.parametrize(
        ("status", "finished_at"),
        [
            (EntitlementSyncState.Status.PENDING, None),
            (EntitlementSyncState.Status.OK, datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)),
        ],
    )
    def test_user_with_sync_state_reads_it(self, user_client, user, status, finished_at):
        EntitlementSyncStateFactory(
            user=user,
            status=status,
            requested_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            finished_at=finished_at,
        )

        response = user_client.get(ME_URL)

        assert response.status_code == 200
        assert response.json()["sync"] == {
            "status": status,
            "requested_at": "2026-01-02T03:04:05Z",
            "finished_at": finished_at and "2026-01-02T03:04:06Z",
        }

    def test_staff_flag_is_shown(self, user_client, user):
        user.is_staff = True
        user.save()

        assert user_client.get(ME_URL).json()["is_staff"] is True


class TestAdminMailDomainListCreateView:
    """/api/v1.0/admin/maildomains/: list administered domains; staff create them."""

    def test_anonymous_is_refused(self, api_client, db):
        assert api_client.get(MAILDOMAINS_URL).status_code == 403
        assert (
            api_client.post(MAILDOMAINS_URL, {"name": "new.example.org"}, format="json").status_code
            == 403
        )

    def test_lists_only_domains_the_user_administers(self, user_client, user):
        beta = MailDomainAccessFactory(user=user, maildomain__name="beta.example.org").maildomain
        alpha = MailDomainAccessFactory(
            user=user,
            maildomain__name="alpha.example.org",
            source=MailDomainAccess.Source.ENTITLEMENTS,
        ).maildomain
        MailDomainAccessFactory(maildomain__name="someone-else.example.org")
        MailDomainFactory(name="nobody.example.org")

        response = user_client.get(MAILDOMAINS_URL)

        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 2
        assert [item["name"] for item in body["results"]] == [
            "alpha.example.org",
            "beta.example.org",
        ]
        assert body["results"][0] == {
            "id": str(alpha.id),
            "name": "alpha.example.org",
            "custom_attributes": {},
            "created_at": alpha.created_at.isoformat().replace("+00:00", "Z"),
            "updated_at": alpha.updated_at.isoformat().replace("+00:00", "Z"),
        }
        assert body["results"][1]["id"] == str(beta.id)

    def test_user_without_domains_gets_an_empty_list(self, user_client):
        assert user_client.get(MAILDOMAINS_URL).json()["results"] == []

    def test_staff_creates_a_domain_and_becomes_its_manual_admin(
        self, staff_client, user, settings
    ):
        settings.FEATURE_MAILDOMAIN_CREATE = True

        response = staff_client.post(MAILDOMAINS_URL, {"name": "  New.Example.ORG "}, format="json")

        assert response.status_code == 201
        assert response.json()["name"] == "new.example.org"
        maildomain = MailDomain.objects.get(name="new.example.org")
        assert str(maildomain.id) == response.json()["id"]
        access = MailDomainAccess.objects.get(maildomain=maildomain)
        assert (access.user, access.role, access.source) == (user, "admin", "manual")
        assert [d["name"] for d in staff_client.get(MAILDOMAINS_URL).json()["results"]] == [
            "new.example.org"
        ]

    def test_duplicate_name_is_a_400(self, staff_client):
        MailDomainFactory(name="taken.example.org")

        response = staff_client.post(MAILDOMAINS_URL, {"name": "TAKEN.example.org"}, format="json")

        assert response.status_code == 400
        assert response.json() == {"name": ["A mail domain with this name already exists."]}
        assert MailDomain.objects.count() == 1
        assert not MailDomainAccess.objects.exists()

    def test_session_writes_need_the_csrf_token(self, user, settings):
        user.is_staff = True
        user.save()
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(user)

        response = client.post(MAILDOMAINS_URL, {"name": "new.example.org"}, format="json")

        assert response.status_code == 403
        assert response.json()["detail"].startswith("CSRF Failed")
        assert not MailDomain.objects.exists()


class TestMailDomainAccessViews:
    """/api/v1.0/maildomains/{id}/accesses/: a domain's admins list, add and remove accesses."""

    def test_admin_lists_the_domain_accesses(self, user_client, user, maildomain, other_access):
        MailDomainAccessFactory()  # another domain's access, not listed

        response = user_client.get(accesses_url(maildomain.id))

        assert response.status_code == 200
        results = response.json()["results"]
        assert [(a["user"]["email"], a["source"]) for a in results] == [
            (user.email, "manual"),
            ("zed@example.org", "entitlements"),
        ]
        assert results[1] == {
            "id": str(other_access.id),
            "user": {
                "id": str(other_access.user.id),
                "email": "zed@example.org",
                "full_name": other_access.user.full_name,
            },
            "role": "admin",
            "source": "entitlements",
            "created_at": other_access.created_at.isoformat().replace("+00:00", "Z"),
            "updated_at": other_access.updated_at.isoformat().replace("+00:00", "Z"),
        }

    def test_admin_retrieves_one_access(self, user_client, maildomain, other_access):
        response = user_client.get(access_url(maildomain.id, other_access.id))

        assert response.status_code == 200
        assert response.json()["id"] == str(other_access.id)

    def test_access_of_another_domain_is_not_found_through_this_one(self, user_client, maildomain):
        foreign = MailDomainAccessFactory()

        response = user_client.get(access_url(maildomain.id, foreign.id))

        assert response.status_code == 404
        assert user_client.delete(access_url(maildomain.id, foreign.id)).status_code == 404
        assert MailDomainAccess.objects.filter(id=foreign.id).exists()

    def test_anonymous_is_refused(self, api_client, maildomain):
        assert api_client.get(accesses_url(maildomain.id)).status_code == 403

    def test_malformed_domain_id_is_a_json_404(self, user_client, maildomain):
        response = user_client.get("/api/v1.0/maildomains/not-a-uuid/accesses/")

        assert response.status_code == 404
        assert response.json() == {"detail": "Not found."}

    @pytest.mark.parametrize("by", ["user", "email"])
    def test_admin_adds_a_manual_access(self, user_client, maildomain, settings, by):
        settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = True
        newcomer = UserFactory(email="New.Person@Example.ORG")
        identity = (
            {"user": str(newcomer.id)} if by == "user" else {"email": "New.Person@example.org"}
        )

        response = user_client.post(accesses_url(maildomain.id), identity, format="json")

        assert response.status_code == 201
        access = MailDomainAccess.objects.get(maildomain=maildomain, user=newcomer)
        assert (access.role, access.source) == ("admin", "manual")
        assert response.json()["id"] == str(access.id)
        assert response.json()["user"]["email"] == "New.Person@example.org"

    def test_duplicate_access_is_a_400(self, user_client, maildomain, other_access):
        response = user_client.post(
            accesses_url(maildomain.id), {"user": str(other_access.user.id)}, format="json"
        )

        assert response.status_code == 400
        assert response.json() == {"user": ["This user already has an access to this mail domain."]}
        other_access.refresh_from_db()
        assert other_access.source == "entitlements"

    def test_admin_deletes_an_access(self, user_client, maildomain, other_access, settings):
        settings.FEATURE_MAILDOMAIN_MANAGE_ACCESSES = True

        response = user_client.delete(access_url(maildomain.id, other_access.id))

        assert response.status_code == 204
        assert not MailDomainAccess.objects.filter(id=other_access.id).exists()


class TestProvisioningView:
    """POST /api/v1.0/provisioning/maildomains/: what DeployCenter's request creates and grants."""

    def test_only_post_is_allowed(self, deploycenter):
        response = deploycenter.get(PROVISIONING_URL)

        assert response.status_code == 405
        assert response.json() == {"detail": 'Method "GET" not allowed.'}

    def test_body_not_declared_as_json_is_a_415(self, deploycenter):
        response = post_raw(
            deploycenter, "domains=a.example.org", "application/x-www-form-urlencoded"
        )

        assert response.status_code == 415
        assert response.json() == {
            "detail": 'Unsupported media type "application/x-www-form-urlencoded" in request.'
        }

    def test_creates_missing_and_reports_existing_in_request_order(self, deploycenter):
        MailDomainFactory(name="old.example.org", custom_attributes={"siret": "1"})

        response = deploycenter.post(
            PROVISIONING_URL,
            {
                "domains": ["new-b.example.org", "old.example.org", "new-a.example.org"],
                "custom_attributes": {"siret": "2", "plan": ["a", "b"]},
            },
            format="json",
        )

        assert response.status_code == 200
        assert response.json() == {
            "created": ["new-b.example.org", "new-a.example.org"],
            "existing": ["old.example.org"],
            "errors": [],
        }
        attributes = dict(MailDomain.objects.values_list("name", "custom_attributes"))
        assert attributes == {
            "new-a.example.org": {"siret": "2", "plan": ["a", "b"]},
            "new-b.example.org": {"siret": "2", "plan": ["a", "b"]},
            "old.example.org": {"siret": "2", "plan": ["a", "b"]},
        }

    def test_duplicates_and_mixed_case_are_normalised(self, deploycenter):
        response = deploycenter.post(
            PROVISIONING_URL,
            {"domains": ["Mixed.Example.ORG", " mixed.example.org ", "mixed.example.org\n"]},
            format="json",
        )

        assert response.json() == {"created": ["mixed.example.org"], "existing": [], "errors": []}
        assert list(MailDomain.objects.values_list("name", flat=True)) == ["mixed.example.org"]

    def test_invalid_names_are_reported_with_a_generic_error(self, deploycenter):
        response = deploycenter.post(
            PROVISIONING_URL,
            {
                "domains": [
                    "good.example.org",
                    "bad_name.example.org",
                    "",
                    "localhost",
                    "Bad_Name.example.org",
                    "münster.de",
                    "x" * 300 + ".org",
                    "a..example.org",
                ]
            },
            format="json",
        )

        assert response.status_code == 200
        body = response.json()
        assert body["created"] == ["good.example.org"]
        assert body["errors"] == [
            {"domain": "bad_name.example.org", "error": "invalid domain name"},
            {"domain": "", "error": "invalid domain name"},
            {"domain": "localhost", "error": "invalid domain name"},
            {"domain": "münster.de", "error": "invalid domain name"},
            {"domain": "x" * 300 + ".org", "error": "invalid domain name"},
            {"domain": "a..example.org", "error": "invalid domain name"},
        ]
        assert list(MailDomain.objects.values_list("name", flat=True)) == ["good.example.org"]

    def test_names_that_only_look_valid_are_refused(self, deploycenter):
        # A newline inside a label once passed the validator (`$` matches before a final "\n"),
        # and Unicode lowers the Kelvin sign to an ASCII "k": neither may create a domain.
        names = ["evil\n.example.org", "evil.example\n.org", "\u212aelvin.example.org"]

        response = deploycenter.post(PROVISIONING_URL, {"domains": names}, format="json")

        assert response.status_code == 200
        assert response.json() == {
            "created": [],
            "existing": [],
            "errors": [{"domain": name, "error": "invalid domain name"} for name in names],
        }
        assert not MailDomain.objects.exists()

    def test_repeating_a_request_changes_nothing(self, deploycenter):
        payload = {
            "domains": ["one.example.org", "two.example.org", "bad_name"],
            "custom_attributes": {"siret": "123"},
        }
        first = deploycenter.post(PROVISIONING_URL, payload, format="json").json()
        before = list(
            MailDomain.objects.values_list("id", "name", "custom_attributes", "updated_at")
        )

        second = deploycenter.post(PROVISIONING_URL, payload, format="json").json()

        assert first["created"] == ["one.example.org", "two.example.org"]
        assert second == {
            "created": [],
            "existing": ["one.example.org", "two.example.org"],
            "errors": [{"domain": "bad_name", "error": "invalid domain name"}],
        }
        after = list(
            MailDomain.objects.values_list("id", "name", "custom_attributes", "updated_at")
        )
        assert after == before

    def test_changed_attributes_move_updated_at_of_existing_domains_only(self, deploycenter):
        deploycenter.post(
            PROVISIONING_URL,
            {"domains": ["one.example.org"], "custom_attributes": {"v": 1}},
            format="json",
        )
        before = MailDomain.objects.get(name="one.example.org")

        deploycenter.post(
            PROVISIONING_URL,
            {"domains": ["one.example.org"], "custom_attributes": {"v": 2}},
            format="json",
        )

        after = MailDomain.objects.get(name="one.example.org")
        assert after.custom_attributes == {"v": 2}
        assert after.updated_at > before.updated_at
        assert after.created_at == before.created_at

    def test_omitted_attributes_leave_existing_ones_untouched(self, deploycenter):
        MailDomainFactory(name="kept.example.org", custom_attributes={"siret": "1"})

        response = deploycenter.post(
            PROVISIONING_URL, {"domains": ["kept.example.org", "fresh.example.org"]}, format="json"
        )

        assert response.json()["created"] == ["fresh.example.org"]
        attributes = dict(MailDomain.objects.values_list("name", "custom_attributes"))
        assert attributes == {"kept.example.org": {"siret": "1"}, "fresh.example.org": {}}

    def test_empty_attributes_object_clears_them(self, deploycenter):
        MailDomainFactory(name="kept.example.org", custom_attributes={"siret": "1"})

        deploycenter.post(
            PROVISIONING_URL,
            {"domains": ["kept.example.org"], "custom_attributes": {}},
            format="json",
        )

        assert MailDomain.objects.get(name="kept.example.org").custom_attributes == {}

    def test_new_domain_is_granted_to_users_whose_last_answer_named_it(self, deploycenter):
        from core.models import AccessAuditEntry, EntitlementSyncState, MailDomainAccess

        told = UserFactory()
        EntitlementSyncState.objects.create(
            user=told,
            status=EntitlementSyncState.Status.OK,
            entitled_domains=["new.example.org", "other.example.org"],
        )
        not_told = UserFactory()
        EntitlementSyncState.objects.create(
            user=not_told, status=EntitlementSyncState.Status.OK, entitled_domains=[]
        )

        response = deploycenter.post(
            PROVISIONING_URL, {"domains": ["New.Example.org"]}, format="json"
        )

        assert response.status_code == 200
        assert response.json()["created"] == ["new.example.org"]
        access = MailDomainAccess.objects.get(maildomain__name="new.example.org")
        assert (access.user, access.role, access.source) == (told, "admin", "entitlements")
        assert AccessAuditEntry.objects.filter(
            user=told, maildomain_name="new.example.org", action="granted", trigger="provisioning"
        ).exists()
