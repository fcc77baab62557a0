"""The Django admin renders every page an operator uses and shows what it should there (a run's
progress and revocations, claim values to superusers only, a user's audit rows and held
revocations), and keeps the sync's records read-only."""

import pytest
from django.core.management import call_command
from django.urls import reverse

from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomain,
    MailDomainAccess,
    SyncRun,
    User,
)
from tests.factories import (
    AccessAuditEntryFactory,
    EntitlementSyncStateFactory,
    MailDomainAccessFactory,
    SyncRunFactory,
    UserFactory,
)
from tests.support.admin_pages import HELD, RUNS

BETA = "beta.example.org"

pytestmark = pytest.mark.usefixtures("fast_password_hasher")


@pytest.fixture
def records(db):
    """One row of every model, linked as the sync would link them."""
    access = MailDomainAccessFactory(
        user__email="alice@example.org",
        user__sub="sub-alice",
        maildomain__name="alpha.example.org",
        source=MailDomainAccess.Source.ENTITLEMENTS,
    )
    state = EntitlementSyncStateFactory(
        user=access.user,
        status=EntitlementSyncState.Status.UNAVAILABLE,
        error_code="upstream_timeout",
        entitled_domains=["alpha.example.org", "not-yet.example.org"],
        last_trigger="login",
    )
    audit = AccessAuditEntryFactory(user=access.user, maildomain_name="alpha.example.org")
    run = SyncRunFactory(users_enqueued=3, users_done=3, users_changed=1)
    held = HeldRevocation.objects.create(
        run=run, user=access.user, maildomain_name="alpha.example.org"
    )
    return {
        User: access.user,
        MailDomain: access.maildomain,
        MailDomainAccess: access,
        EntitlementSyncState: state,
        AccessAuditEntry: audit,
        SyncRun: run,
        HeldRevocation: held,
    }


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:core_{model._meta.model_name}_{view}", args=args)


ALL_MODELS = [
    User,
    MailDomain,
    MailDomainAccess,
    EntitlementSyncState,
    AccessAuditEntry,
    SyncRun,
    HeldRevocation,
]
READ_ONLY_MODELS = [EntitlementSyncState, AccessAuditEntry, SyncRun, HeldRevocation]
# The management form of the user page's empty accesses inline.
NO_ACCESS_ROWS = {"maildomain_accesses-TOTAL_FORMS": "0", "maildomain_accesses-INITIAL_FORMS": "0"}


def test_system_checks_pass():
    call_command("check", "--fail-level", "WARNING")


@pytest.mark.parametrize("model", ALL_MODELS, ids=lambda m: m.__name__)
def test_changelist_and_change_pages_render(admin_client, records, model):
    changelist = admin_client.get(admin_url(model, "changelist"))
    change = admin_client.get(admin_url(model, "change", records[model].pk))

    assert changelist.status_code == 200
    assert change.status_code == 200
    # The changelist shows the record (the admin user adds a second User row).
    assert changelist.context["cl"].result_count == (2 if model is User else 1)


@pytest.mark.parametrize(
    ("model", "query"),
    [
        (User, "alice@example"),
        (User, "sub-alice"),
        (MailDomain, "alpha"),
        (MailDomainAccess, "alice@example"),
        (MailDomainAccess, "alpha.example"),
        (EntitlementSyncState, "alice@example"),
        (AccessAuditEntry, "alpha.example"),
        (AccessAuditEntry, "alice@example"),
    ],
)
def test_search_finds_the_record(admin_client, records, model, query):
    response = admin_client.get(admin_url(model, "changelist"), {"q": query})

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [records[model]]


@pytest.mark.parametrize(
    ("model", "filters", "count"),
    [
        (MailDomainAccess, {"role__exact": "admin"}, 1),
        (MailDomainAccess, {"source__exact": "manual"}, 0),
        (MailDomainAccess, {"source__exact": "entitlements"}, 1),
        (EntitlementSyncState, {"status__exact": "unavailable"}, 1),
        (EntitlementSyncState, {"status__exact": "ok"}, 0),
        (SyncRun, {"status__exact": "done"}, 1),
        (SyncRun, {"status__exact": "running"}, 0),
        (User, {"sync_state__status__exact": "unavailable"}, 1),
    ],
)
def test_list_filters(admin_client, records, model, filters, count):
    response = admin_client.get(admin_url(model, "changelist"), filters)

    assert response.status_code == 200
    assert response.context["cl"].result_count == count


def test_user_page_shows_sync_state_accesses_and_audit_link(admin_client, records):
    user = records[User]

    response = admin_client.get(admin_url(User, "change", user.pk))

    page = response.content.decode()
    assert "Upstream unavailable" in page
    assert "upstream_timeout" in page
    assert "not-yet.example.org" in page
    assert "alpha.example.org" in page  # the accesses inline
    assert "1 access change by the sync" in page
    audit = admin_client.get(
        admin_url(AccessAuditEntry, "changelist"), {"user__id__exact": str(user.pk)}
    )
    assert audit.status_code == 200
    assert list(audit.context["cl"].result_list) == [records[AccessAuditEntry]]


def test_user_without_sync_state_reads_never_synced(admin_client, db):
    user = UserFactory()

    page = admin_client.get(admin_url(User, "change", user.pk)).content.decode()
    changelist = admin_client.get(admin_url(User, "changelist")).content.decode()

    assert "Never synced" in page
    assert "Never synced" in changelist


def test_operator_creates_a_user_with_a_normalised_email(admin_client, db):
    assert admin_client.get(admin_url(User, "add")).status_code == 200

    response = admin_client.post(
        admin_url(User, "add"),
        {
            "email": "Operator@Example.ORG",
            "full_name": "An Operator",
            "usable_password": "true",
            "password1": "a-long-enough-passphrase",
            "password2": "a-long-enough-passphrase",
            **NO_ACCESS_ROWS,
        },
    )

    assert response.status_code == 302
    user = User.objects.get(full_name="An Operator")
    assert user.email == "Operator@example.org"
    assert user.check_password("a-long-enough-passphrase")


def test_duplicate_email_in_another_case_is_a_form_error(admin_client, db):
    UserFactory(email="taken@example.org")

    response = admin_client.post(
        admin_url(User, "add"),
        {"email": "taken@EXAMPLE.org", "usable_password": "false", **NO_ACCESS_ROWS},
    )

    assert response.status_code == 200
    assert "User with this Email already exists." in response.content.decode()


def test_operator_creates_a_domain_with_a_normalised_name(admin_client, db):
    assert admin_client.get(admin_url(MailDomain, "add")).status_code == 200

    response = admin_client.post(
        admin_url(MailDomain, "add"),
        {
            "name": "  New.Example.ORG ",
            "custom_attributes": "{}",
            "accesses-TOTAL_FORMS": "0",
            "accesses-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 302
    assert MailDomain.objects.filter(name="new.example.org").exists()


def test_invalid_domain_name_is_a_form_error(admin_client, db):
    response = admin_client.post(
        admin_url(MailDomain, "add"),
        {
            "name": "not a domain",
            "custom_attributes": "{}",
            "accesses-TOTAL_FORMS": "0",
            "accesses-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 200
    assert "Enter a valid domain name." in response.content.decode()
    assert not MailDomain.objects.exists()


def test_operator_adds_an_access(admin_client, records):
    newcomer = UserFactory()

    response = admin_client.post(
        admin_url(MailDomainAccess, "add"),
        {
            "user": str(newcomer.pk),
            "maildomain": str(records[MailDomain].pk),
            "role": "admin",
            "source": "manual",
        },
    )

    assert response.status_code == 302
    assert MailDomainAccess.objects.filter(user=newcomer, source="manual").exists()


def test_domain_list_counts_admins(admin_client, records):
    MailDomainAccessFactory(maildomain=records[MailDomain])

    response = admin_client.get(admin_url(MailDomain, "changelist"))

    assert response.context["cl"].result_list[0].admin_count == 2


def test_autocomplete_of_users_and_domains_works(admin_client, records):
    for field in ("user", "maildomain"):
        response = admin_client.get(
            "/admin/autocomplete/",
            {
                "app_label": "core",
                "model_name": "maildomainaccess",
                "field_name": field,
                "term": "al",
            },
        )
        assert response.status_code == 200
        assert len(response.json()["results"]) == 1


@pytest.mark.parametrize("model", READ_ONLY_MODELS, ids=lambda m: m.__name__)
def test_sync_records_are_read_only(admin_client, records, model):
    record = records[model]

    add = admin_client.get(admin_url(model, "add"))
    delete = admin_client.post(admin_url(model, "delete", record.pk), {"post": "yes"})
    change = admin_client.get(admin_url(model, "change", record.pk))

    assert add.status_code == 403
    assert delete.status_code == 403
    assert model.objects.filter(pk=record.pk).exists()
    assert b'name="_save"' not in change.content


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
            budget_reached=True,
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
        assert "<td>Granted</td><td>beta.example.org</td><td>Login</td><td>t-1</td>" in text
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
