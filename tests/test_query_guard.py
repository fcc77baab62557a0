"""Filter values are input too: admin list filters and searches take odd values without a
500, and a NUL anywhere in an address is a 400 before any view reads it (core/query_guard.py;
PostgreSQL cannot compare text holding one).

Every registered list (ours and the Celery packages'), every filter parameter it declares, the
search and the ordering.
"""

import pytest
from django.contrib import admin
from django.contrib.admin import SimpleListFilter
from django.urls import reverse

from core.models import HeldRevocation, SyncRun

ODD_VALUES = ["zz", "-1", "%", "x" * 5000, "1e999", "\u212a", "'; --", "[]", "\ufeff"]
NUL_VALUES = ["\x00", "x\x00", "\x00x"]


def changelists() -> list[tuple[str, list[str]]]:
    """Each registered list's URL and the query parameters it reads."""
    lists = []
    for model, model_admin in admin.site._registry.items():
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        names = ["q", "o", "p"]
        for spec in model_admin.list_filter:
            spec = spec[0] if isinstance(spec, tuple) else spec
            if isinstance(spec, type) and issubclass(spec, SimpleListFilter):
                names.append(spec.parameter_name)
            elif isinstance(spec, str):
                names += [spec, f"{spec}__exact", f"{spec}__isnull"]
        lists.append((url, names))
    return lists


@pytest.fixture
def client(superuser_client):
    # An answer, never an exception: a 500 is what the test looks for.
    superuser_client.raise_request_exception = False
    return superuser_client


@pytest.fixture
def rows(held):
    """A run, its held revocations and audit entries, so every list has rows to filter."""
    assert SyncRun.objects.exists() and HeldRevocation.objects.exists()


@pytest.mark.long
def test_every_filter_takes_odd_values_without_a_500(client, rows):
    failures = []
    for url, names in changelists():
        for name in names:
            for value in ODD_VALUES:
                status = client.get(url, {name: value}).status_code
                if status >= 500:
                    failures.append((url, name, value[:10], status))
    assert failures == []


def test_a_nul_in_any_filter_is_a_400(client, rows):
    failures = []
    for url, names in changelists():
        for name in names:
            for value in NUL_VALUES:
                response = client.get(url, {name: value})
                if response.status_code != 400:
                    failures.append((url, name, repr(value), response.status_code))
    assert failures == []
    response = client.get(reverse("admin:core_syncrun_changelist"), {"error_code": "x\x00"})
    assert response.content.decode() == "The address must not hold a NUL character."


def test_the_issue_s_addresses(client, rows):
    for path in [
        "/admin/core/syncrun/?status=%00",
        "/admin/core/syncrun/?error_code=x%00",
        "/admin/core/entitlementsyncstate/?status=%00",
        "/admin/core/entitlementsyncstate/?error_code=x%00",
        "/admin/core/accessauditentry/?action=%00",
        "/admin/core/heldrevocation/?resolution=%00",
        "/admin/core/heldrevocation/?q=%00",
        "/admin/core/user/%00/change/",
        "/admin/%00/",
        "/api/v1.0/users/me/?x=%00",
    ]:
        assert client.get(path).status_code == 400, path


def test_a_nul_in_the_api_is_a_json_400(client):
    response = client.get("/api/v1.0/users/me/", {"page": "\x00"})

    assert response.status_code == 400
    assert response.json() == {"detail": "The address must not hold a NUL character."}
