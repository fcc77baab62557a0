"""OIDC login: users are found by their `sub`, never by email alone; a login requests a sync."""

from django.conf import settings
from mozilla_django_oidc.auth import OIDCAuthenticationBackend as BaseOIDCBackend

from core.entitlements import forwarded_claim_names
from core.models import EntitlementSyncState, User, normalize_email
from core.sync_requests import request_sync

LOGIN_TRIGGER = "login"


def record_login(*, user: User, claims: dict) -> str | None:
    """The post-login step: keep the claims the backend forwards, and request a sync.

    Never waits on the entitlements service or the broker: the sync runs in a worker. Only
    the configured forwarded claims are stored, never tokens. Returns request_sync's task id.
    """
    forwarded = {name: claims[name] for name in forwarded_claim_names() if name in claims}
    return request_sync(user=user, trigger=LOGIN_TRIGGER, forwarded_claims=forwarded)


class OIDCAuthenticationBackend(BaseOIDCBackend):
    """Creates or updates the user from the OIDC claims, then records the login."""

    # The id of the sync task the login queued (None when collapsed into a queued one).
    sync_task_id: str | None = None

    def filter_users_by_claims(self, claims):
        sub = claims.get("sub")
        if not sub:
            return self.UserModel.objects.none()
        return self.UserModel.objects.filter(sub=sub)

    def create_user(self, claims):
        user = self.UserModel.objects.create_user(
            email=normalize_email(claims.get("email", "")),
            sub=claims["sub"],
            full_name=self._full_name(claims),
        )
        # Made with the user: the login's request then records itself in one UPDATE.
        EntitlementSyncState.objects.create(user=user)
        self.sync_task_id = record_login(user=user, claims=claims)
        return user

    def update_user(self, user, claims):
        user.email = normalize_email(claims.get("email", user.email))
        user.full_name = self._full_name(claims) or user.full_name
        user.save(update_fields=["email", "full_name", "updated_at"])
        self.sync_task_id = record_login(user=user, claims=claims)
        return user

    def _full_name(self, claims) -> str:
        parts = [claims.get(field, "") for field in settings.OIDC_USERINFO_FULLNAME_FIELDS]
        return " ".join(part for part in parts if part).strip()
