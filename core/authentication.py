"""OIDC login: users are found by their `sub`, never by email alone; a login requests a sync."""

from django.conf import settings
from mozilla_django_oidc.auth import OIDCAuthenticationBackend as BaseOIDCBackend

from core.entitlements import SyncRequest, forwarded_claim_names, request_sync
from core.models import EntitlementSyncState, Trigger, User
from core.validators import normalize_email


def record_login(*, user: User, claims: dict) -> SyncRequest:
    """The post-login step: keep the claims the backend forwards, and request a sync.

    Never waits on the entitlements service or the broker: the sync runs in a worker. Only
    the configured forwarded claims are stored, never tokens.
    """
    forwarded = {name: claims[name] for name in forwarded_claim_names() if name in claims}
    return request_sync(user=user, trigger=Trigger.LOGIN, forwarded_claims=forwarded)


class OIDCAuthenticationBackend(BaseOIDCBackend):
    """Creates or updates the user from the OIDC claims, then records the login."""

    # What became of the sync the last login requested (None before a login).
    sync_request: SyncRequest | None = None

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
        self.sync_request = record_login(user=user, claims=claims)
        return user

    def update_user(self, user, claims):
        user.email = normalize_email(claims.get("email", user.email))
        user.full_name = self._full_name(claims) or user.full_name
        user.save(update_fields=["email", "full_name", "updated_at"])
        self.sync_request = record_login(user=user, claims=claims)
        return user

    def _full_name(self, claims) -> str:
        parts = [claims.get(field, "") for field in settings.OIDC_USERINFO_FULLNAME_FIELDS]
        return " ".join(part for part in parts if part).strip()
