"""core/templatetags/service_overview.py: the admin index's panel, for staff who may see the
sync runs, and nothing at all for the others."""

import pytest
from django.contrib.auth.models import Permission
from django.template import Context, Template
from django.test import RequestFactory

from tests.factories import SyncRunFactory, UserFactory

PANEL = Template("{% load service_overview %}{% service_overview %}")


def _render_for(user) -> str:
    request = RequestFactory().get("/admin/")
    request.user = user
    return PANEL.render(Context({"request": request}))


@pytest.fixture
def run(db):
    return SyncRunFactory(users_enqueued=4, users_done=4, users_changed=2)


def test_staff_who_may_see_the_runs_get_the_panel(run):
    operator = UserFactory(is_staff=True)
    operator.user_permissions.add(Permission.objects.get(codename="view_syncrun"))

    html = _render_for(operator)

    assert 'id="service-overview"' in html
    assert f"#{run.pk} " in html
    assert "4 of 4 users done, 2 changed" in html


def test_anyone_else_gets_nothing(run):
    html = _render_for(UserFactory(is_staff=True))

    assert html.strip() == ""
