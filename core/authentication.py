"""OIDC login: users are found by their `sub`, never by email alone; a login requests a sync."""

import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from mozilla_django_oidc.auth import OIDCAuthenticationBackend as BaseOIDCBackend

from core.entitlements import request_sync

# The receipt's type, for annotations (tests/test_layers.py lists this reader of the package).
from core.entitlements.receipts import SyncReceipt
from core.models import EntitlementSyncState, Trigger, User
from core.validators import normalize_email

logger = logging.getLogger(__name__)


def request_login_sync(*, user: User, claims: dict) -> SyncReceipt:
    """The post-login step: request a sync, storing the claims the backend forwards.

    Never waits on the entitlements service or the broker: the sync runs in a worker.
    """
    return request_sync(user=user, trigger=Trigger.LOGIN, login_claims=claims)


def email_from_login(*, stored: str, claimed: str) -> str:
    """The e-mail to keep at a login: the provider's, unless only its case differs from ours.

    DeployCenter matches the local part exactly, as it stored it: a provider that changes its
    case would make the upstream find nobody (docs/entitlements.md, "The identity rule").
    """
    claimed = normalize_email(claimed)
    return stored if claimed.lower() == stored.lower() else claimed


class OIDCAuthenticationBackend(BaseOIDCBackend):
    """Creates or updates the user from the OIDC claims, then requests their sync.

    A login whose e-mail belongs to another local user is refused like a failed
    authentication (mozilla-django-oidc's failure redirect), never a 500. With
    OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION, a user without a `sub` is adopted by e-mail;
    a user holding another `sub` never is. Log lines name users by id, never by e-mail.
    """

    # What became of the sync the last login requested (None before a login).
    sync_request: SyncReceipt | None = None

    def filter_users_by_claims(self, claims):
        sub = claims.get("sub")
        if not sub:
            return self.UserModel.objects.none()
        users = self.UserModel.objects.filter(sub=sub)
        # The setting first: with the fallback off (the default) a login costs no extra query.
        if not settings.OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION:
            return users
        email = normalize_email(claims.get("email", ""))
        if not email or users.exists():
            return users
        return self.UserModel.objects.filter(Q(sub__isnull=True) | Q(sub=""), email=email)

    def create_user(self, claims):
        email = normalize_email(claims.get("email", ""))
        holder = self.UserModel.objects.filter(email=email).values_list("pk", flat=True).first()
        if holder is not None:
            _refuse(holder)
            return None
        try:
            # A savepoint: a concurrent first login of the same person may win the insert.
            with transaction.atomic():
                user = self.UserModel.objects.create_user(
                    email=email, sub=claims["sub"], full_name=self._full_name(claims)
                )
                # Made with the user: the login's request then records itself in one UPDATE.
                EntitlementSyncState.objects.create(user=user)
        except IntegrityError:
            logger.warning("OIDC login refused: its subject or e-mail was taken meanwhile")
            return None
        self.sync_request = request_login_sync(user=user, claims=claims)
        return user

    def update_user(self, user, claims):
        email = email_from_login(stored=user.email, claimed=claims.get("email", user.email))
        holder = (
            self.UserModel.objects.filter(email=email)
            .exclude(pk=user.pk)
            .values_list("pk", flat=True)
            .first()
        )
        if holder is not None:
            _refuse(holder)
            return None
        if not user.sub:
            # Only reached through OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION.
            user.sub = claims["sub"]
            logger.warning("OIDC login adopted user %s by e-mail: its subject is now set", user.pk)
        user.email = email
        user.full_name = self._full_name(claims) or user.full_name
        try:
            with transaction.atomic():
                user.save(update_fields=["sub", "email", "full_name", "updated_at"])
        except IntegrityError:
            logger.warning("OIDC login of user %s refused: its e-mail was taken meanwhile", user.pk)
            return None
        self.sync_request = request_login_sync(user=user, claims=claims)
        return user

    def _full_name(self, claims) -> str:
        parts = [claims.get(field, "") for field in settings.OIDC_USERINFO_FULLNAME_FIELDS]
        return " ".join(part for part in parts if part).strip()


def _refuse(holder_id) -> None:
    """Log a login refused because its e-mail belongs to another user, naming only their id."""
    logger.warning(
        "OIDC login refused: its e-mail belongs to user %s, who has another or no OIDC subject "
        "(see OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION in docs/operations.md)",
        holder_id,
    )
