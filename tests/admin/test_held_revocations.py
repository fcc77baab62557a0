"""Releasing and discarding held revocations from the admin: a confirmation with a dry run first,
the selection across pages honoured."""

import pytest

from core.models import AccessAuditEntry, HeldRevocation, MailDomainAccess, User
from tests.support.admin_pages import HELD, RUNS, act, shown

SYNC = MailDomainAccess.Source.ENTITLEMENTS

pytestmark = pytest.mark.usefixtures("fast_password_hasher")


class TestReleaseFromTheAdmin:
    def test_release_asks_for_confirmation_with_a_dry_run_then_revokes(
        self, superuser_client, held
    ):
        first = act(superuser_client, RUNS, "release_held", [held["run"]])

        assert first.status_code == 200
        page = first.content.decode()
        assert "3 pending held revocations: 2 would be revoked, 1 kept" in page
        assert MailDomainAccess.objects.filter(source=SYNC).count() == 3

        second = act(superuser_client, RUNS, "release_held", [held["run"]], confirmed="yes")

        assert shown(second) == [
            'Held revocations released: 2 revoked (audit trigger "release"), 1 kept, '
            "0 already gone."
        ]
        assert MailDomainAccess.objects.filter(source=SYNC).get().user == held["users"][0]
        assert AccessAuditEntry.objects.filter(trigger="release", action="revoked").count() == 2
        operator = User.objects.get(email="admin@example.com")
        assert set(HeldRevocation.objects.values_list("resolved_by", flat=True)) == {operator.pk}

    def test_discard_from_the_held_revocations_list_keeps_the_accesses(
        self, superuser_client, held
    ):
        rows = list(HeldRevocation.objects.filter(user__in=held["users"][1:]))

        confirm = act(superuser_client, HELD, "discard_held", rows)
        assert "2 pending held revocations would be discarded" in confirm.content.decode()
        done = act(superuser_client, HELD, "discard_held", rows, confirmed="yes")

        assert shown(done) == ["2 held revocations discarded; accesses kept."]
        assert MailDomainAccess.objects.filter(source=SYNC).count() == 3
        assert HeldRevocation.objects.filter(resolution="pending").count() == 1

    def test_select_all_across_pages_releases_every_row_of_the_filter(self, superuser_client, held):
        response = superuser_client.post(
            HELD,
            {
                "action": "release_held",
                "select_across": "1",
                "index": "0",
                "_selected_action": [str(HeldRevocation.objects.first().pk)],
            },
        )
        assert 'name="select_across" value="1"' in response.content.decode()

        # The confirmation posts back the page's selection and select_across, as it got them.
        superuser_client.post(
            HELD,
            {
                "action": "release_held",
                "select_across": "1",
                "confirmed": "yes",
                "_selected_action": [str(HeldRevocation.objects.first().pk)],
            },
        )

        assert not HeldRevocation.objects.filter(resolution="pending").exists()
