"""GET /api/v1.0/users/me/: the authenticated user and their sync state."""

from datetime import UTC, datetime

import pytest

from core.models import EntitlementSyncState
from tests.factories import EntitlementSyncStateFactory

URL = "/api/v1.0/users/me/"


def test_anonymous_is_refused(api_client, db):
    response = api_client.get(URL)

    assert response.status_code == 403
    assert response.json() == {"detail": "Authentication credentials were not provided."}


def test_user_without_sync_state_reads_never(user_client, user):
    response = user_client.get(URL)

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
def test_user_with_sync_state_reads_it(user_client, user, status, finished_at):
    EntitlementSyncStateFactory(
        user=user,
        status=status,
        requested_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        finished_at=finished_at,
    )

    response = user_client.get(URL)

    assert response.status_code == 200
    assert response.json()["sync"] == {
        "status": status,
        "requested_at": "2026-01-02T03:04:05Z",
        "finished_at": finished_at and "2026-01-02T03:04:06Z",
    }


def test_staff_flag_is_shown(user_client, user):
    user.is_staff = True
    user.save()

    assert user_client.get(URL).json()["is_staff"] is True
