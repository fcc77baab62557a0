"""What an operator reads in the admin (issue 12): headers, the run's budget, start time and
filters, plurals that agree, and no page that ends in a bare 404."""

import re
from html import unescape

import pytest
from django.contrib.admin.views.main import ChangeList
from django.urls import reverse
from django.utils import formats, timezone

from core.models import HeldRevocation
from tests.factories import (
    AccessAuditEntryFactory,
    EntitlementSyncStateFactory,
    MailDomainAccessFactory,
    SyncRunFactory,
)

RUNS = reverse("admin:core_syncrun_changelist")
STATES = reverse("admin:core_entitlementsyncstate_changelist")


pytestmark = pytest.mark.usefixtures("fast_password_hasher")


def text_of(response) -> str:
    """The page's text: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", response.content.decode())).split())


def filter_choices(response, title: str) -> list[str]:
    """The entries of the changelist's filter with this title, as the sidebar lists them."""
    changelist: ChangeList = response.context["cl"]
    [spec] = [spec for spec in changelist.filter_specs if spec.title == title]
    return [str(choice["display"]) for choice in spec.choices(changelist)]


def test_the_accesses_inline_of_a_user_is_headed_mail_domain_accesses(admin_client, db):
    access = MailDomainAccessFactory()

    page = admin_client.get(reverse("admin:core_user_change", args=[access.user.pk]))

    assert "Mail domain accesses" in text_of(page)
    assert "accesss" not in page.content.decode().lower()


def test_the_budget_column_says_what_was_revoked_of_what_budget(admin_client, db):
    SyncRunFactory(revocable_accesses=2, revoke_budget=10, accesses_revoked=0)

    shown = text_of(admin_client.get(RUNS))

    assert "Revocation budget" in shown
    assert "revoked 0 of budget 10 (2 revocable)" in shown
    assert "0/10 of 2" not in shown


def test_a_run_page_shows_when_the_run_started(admin_client, db):
    run = SyncRunFactory()
    started = formats.localize(timezone.template_localtime(run.started_at))

    page = text_of(admin_client.get(reverse("admin:core_syncrun_change", args=[run.pk])))

    assert f"Started at: {started}" in page


@pytest.mark.parametrize(("url", "make"), [(RUNS, SyncRunFactory), (STATES, None)])
def test_the_error_code_filter_lists_codes_and_none_never_an_empty_entry(
    admin_client, db, url, make
):
    if make is None:  # sync states, one per user
        with_code = EntitlementSyncStateFactory(error_code="upstream_timeout")
        without = EntitlementSyncStateFactory(error_code="")
    else:
        with_code, without = make(error_code="upstream_timeout"), make(error_code="")

    choices = filter_choices(admin_client.get(url), "error code")
    none = admin_client.get(url, {"error_code": "__none__"}).context["cl"].result_list
    timeout = admin_client.get(url, {"error_code": "upstream_timeout"}).context["cl"].result_list

    assert choices == ["All", "upstream_timeout", "none"]
    assert (list(none), list(timeout)) == ([without], [with_code])


def test_the_root_url_leads_to_the_admin(client, admin_client):
    anonymous = client.get("/")
    operator = admin_client.get("/", follow=True)

    assert (anonymous.status_code, anonymous["Location"]) == (302, reverse("admin:index"))
    assert operator.status_code == 200
    assert operator.redirect_chain == [(reverse("admin:index"), 302)]


def test_no_link_of_the_admin_header_ends_in_a_404(admin_client):
    index = admin_client.get(reverse("admin:index")).content.decode()
    tools = re.search(r'<div id="user-tools">(.*?)</div>', index, re.S).group(1)
    links = re.findall(r'href="([^"]+)"', tools)

    assert links, "no links in the admin's header"
    for link in links:
        assert admin_client.get(link, follow=True).status_code != 404, link


def test_counts_on_the_pages_agree_with_their_nouns(admin_client, db):
    one_change = AccessAuditEntryFactory()
    two_changes = AccessAuditEntryFactory()
    AccessAuditEntryFactory(user=two_changes.user)
    run = SyncRunFactory()
    HeldRevocation.objects.create(run=run, user=one_change.user, maildomain_name="a.example.org")

    def page(name, obj):
        return text_of(admin_client.get(reverse(f"admin:core_{name}_change", args=[obj.pk])))

    assert "1 access change by the sync" in page("user", one_change.user)
    assert "2 access changes by the sync" in page("user", two_changes.user)
    assert "1 held revocation, 1 pending" in page("syncrun", run)


def test_a_users_page_shows_times_and_labels_as_the_rest_of_the_admin(admin_client, db):
    state = EntitlementSyncStateFactory(
        requested_at=timezone.now(), started_at=timezone.now(), last_trigger="login"
    )
    AccessAuditEntryFactory(user=state.user, action="revoked", trigger="periodic")

    shown = text_of(admin_client.get(reverse("admin:core_user_change", args=[state.user.pk])))

    requested = formats.date_format(timezone.localtime(state.requested_at), "DATETIME_FORMAT")
    assert f"Requested {requested}" in shown
    assert str(state.requested_at) not in shown  # the raw value, microseconds and all
    assert "Revoked" in shown and "Periodic resync" in shown


def test_the_users_list_filters_by_sync_status_under_that_name(admin_client, db):
    EntitlementSyncStateFactory()

    page = admin_client.get(reverse("admin:core_user_changelist"))

    assert "Up to date" in filter_choices(page, "sync status")
