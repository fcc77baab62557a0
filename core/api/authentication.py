"""Authentication of DeployCenter on the provisioning API by a shared bearer key."""

import hmac
import logging

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission

logger = logging.getLogger(__name__)

# The `request.auth` of a request that presented the provisioning key.
PROVISIONING_CLIENT = "provisioning-client"
# The scheme, case-sensitive, and the one space before the key (docs/api.md).
_SCHEME = "Bearer "


def provisioning_key_matches(*, authorization: str) -> bool:
    """True when the header is exactly `Bearer <PROVISIONING_API_KEY>` (one space, nothing
    around) and a key is set."""
    expected = settings.PROVISIONING_API_KEY
    if not expected:
        logger.warning("Provisioning request refused: PROVISIONING_API_KEY is not set")
        return False
    if not authorization.startswith(_SCHEME):
        return False
    # Exactly the key after "Bearer ": another space, a second token or a tab is part of what
    # is compared, so it never matches. Constant time on bytes, so the time taken does not
    # tell how much of the key matched; surrogatepass: any str a WSGI server or a test client
    # hands over encodes, so no header can make a 500.
    presented = authorization.removeprefix(_SCHEME)
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class ProvisioningKeyAuthentication(BaseAuthentication):
    """Accepts only `Authorization: Bearer <PROVISIONING_API_KEY>`; no session, so no CSRF."""

    def authenticate(self, request):
        authorization = request.META.get("HTTP_AUTHORIZATION", "")
        if not provisioning_key_matches(authorization=authorization):
            # One message for every failure: the caller cannot tell a missing configuration
            # from a wrong key. No WWW-Authenticate header, so DRF answers 403.
            raise AuthenticationFailed("Invalid or missing provisioning API key.")
        return AnonymousUser(), PROVISIONING_CLIENT


class IsProvisioningClient(BasePermission):
    """Lets through only requests authenticated by the provisioning key."""

    message = "Invalid or missing provisioning API key."

    def has_permission(self, request, view):
        return request.auth == PROVISIONING_CLIENT


class ProvisioningKeyScheme(OpenApiAuthenticationExtension):
    """Documents the provisioning key as a bearer scheme in the OpenAPI schema."""

    target_class = ProvisioningKeyAuthentication
    name = "provisioningKey"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(
            header_name="Authorization",
            token_prefix="Bearer",  # noqa: S106 - the scheme's name, not a secret
        )
