"""Read-only queries of the domain, shared by the API and the admin."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet

from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User, normalize_email


@dataclass(frozen=True)
class SyncSummary:
    """What a front end shows about a user's entitlements sync."""

    status: str
    requested_at: datetime | None
    finished_at: datetime | None


def get_sync_summary(*, user: User) -> SyncSummary:
    """Return the user's sync status and times; status "never" when no sync was ever asked."""
    row = (
        EntitlementSyncState.objects.filter(user=user)
        .values("status", "requested_at", "finished_at")
        .first()
    )
    if row is None:
        return SyncSummary(
            status=EntitlementSyncState.Status.NEVER, requested_at=None, finished_at=None
        )
    return SyncSummary(**row)


def maildomains_administered_by(*, user: User) -> QuerySet[MailDomain]:
    """Mail domains on which the user holds the ADMIN role, by name."""
    return MailDomain.objects.filter(
        accesses__user=user, accesses__role=MailDomainAccess.Role.ADMIN
    ).order_by("name")


def get_administered_maildomain(*, user: User, maildomain_id: uuid.UUID) -> MailDomain | None:
    """The mail domain with this id if the user administers it, else None."""
    return maildomains_administered_by(user=user).filter(id=maildomain_id).first()


def maildomain_accesses(*, maildomain: MailDomain) -> QuerySet[MailDomainAccess]:
    """Accesses of one mail domain with their users, by user email."""
    return (
        MailDomainAccess.objects.filter(maildomain=maildomain)
        .select_related("user")
        .order_by("user__email")
    )


def find_user(*, user_id: uuid.UUID | None = None, email: str | None = None) -> User | None:
    """The user with this id, or with this email (domain part compared lower-case)."""
    if user_id is not None:
        return User.objects.filter(id=user_id).first()
    if email:
        return User.objects.filter(email=normalize_email(email)).first()
    return None
