"""OIDC login: users are found by their `sub`, never by email alone."""

from mozilla_django_oidc.auth import OIDCAuthenticationBackend as BaseOIDCBackend

from core.models import normalize_email


class OIDCAuthenticationBackend(BaseOIDCBackend):
    """Creates or updates the user from the OIDC claims."""

    def filter_users_by_claims(self, claims):
        sub = claims.get("sub")
        if not sub:
            return self.UserModel.objects.none()
        return self.UserModel.objects.filter(sub=sub)

    def create_user(self, claims):
        return self.UserModel.objects.create_user(
            email=normalize_email(claims.get("email", "")),
            sub=claims["sub"],
            full_name=self._full_name(claims),
        )

    def update_user(self, user, claims):
        user.email = normalize_email(claims.get("email", user.email))
        user.full_name = self._full_name(claims) or user.full_name
        user.save(update_fields=["email", "full_name", "updated_at"])
        return user

    def _full_name(self, claims) -> str:
        from django.conf import settings

        parts = [claims.get(field, "") for field in settings.OIDC_USERINFO_FULLNAME_FIELDS]
        return " ".join(part for part in parts if part).strip()
