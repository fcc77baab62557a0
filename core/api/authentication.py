"""Authentication of DeployCenter by a shared bearer key (provisioning, change signals)."""

import hmac
import logging
from collections.abc import Sequence

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission

logger = logging.getLogger(__name__)

# The scheme, case-sensitive, and the one space before the key (docs/api.md).
_SCHEME = "Bearer "


def bearer_key_matches(*, authorization: str, keys: Sequence[str]) -> bool:
    """True when the header is exactly `Bearer <key>` (one space, nothing around) for one of
    `keys`; False when there is none."""
    if not authorization.startswith(_SCHEME):
        return False
    # Exactly the key after "Bearer ": another space, a second token or a tab is part of what
    # is compared, so it never matches. Constant time on bytes, so the time taken does not
    # tell how much of a key matched; every key is compared, so it does not tell which one
    # did either. surrogatepass: any str a WSGI server or a test client hands over encodes,
    # so no header can make a 500.
    presented = authorization.removeprefix(_SCHEME).encode("utf-8", "surrogatepass")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key.encode("utf-8", "surrogatepass"))
    return matched


class BearerKeyAuthentication(BaseAuthentication):
    """Accepts only `Authorization: Bearer <one of the keys>`; no session, so no CSRF.

    A subclass names its `client` (the `request.auth` it sets), its refusal `message` and
    where its keys come from.
    """

    client: str
    message: str

    def keys(self) -> Sequence[str]:
        raise NotImplementedError

    def authenticate(self, request):
        authorization = request.META.get("HTTP_AUTHORIZATION", "")
        if not bearer_key_matches(authorization=authorization, keys=self.keys()):
            # One message for every failure: the caller cannot tell a missing configuration
            # from a wrong key. No WWW-Authenticate header, so DRF answers 403.
            raise AuthenticationFailed(self.message)
        return AnonymousUser(), self.client


class ProvisioningKeyAuthentication(BearerKeyAuthentication):
    """DeployCenter on the provisioning API: `Bearer <PROVISIONING_API_KEY>`."""

    client = "provisioning-client"
    message = "Invalid or missing provisioning API key."

    def keys(self) -> Sequence[str]:
        if not settings.PROVISIONING_API_KEY:
            logger.warning("Provisioning request refused: PROVISIONING_API_KEY is not set")
            return ()
        return (settings.PROVISIONING_API_KEY,)


class ChangesTokenAuthentication(BearerKeyAuthentication):
    """DeployCenter's webhooks: `Bearer <one of ENTITLEMENTS_CHANGES_TOKEN>` (rotation)."""

    client = "changes-client"
    message = "Invalid or missing entitlements changes token."

    def keys(self) -> Sequence[str]:
        return settings.ENTITLEMENTS_CHANGES_TOKEN


class IsKeyClient(BasePermission):
    """Lets through only requests the view's own key authentication accepted."""

    def has_permission(self, request, view):
        authenticator = request.successful_authenticator
        return isinstance(authenticator, BearerKeyAuthentication) and (
            request.auth == authenticator.client
        )


class ProvisioningKeyScheme(OpenApiAuthenticationExtension):
    """Documents a key as a bearer scheme in the OpenAPI schema (the changes token too)."""

    target_class: type[BearerKeyAuthentication] = ProvisioningKeyAuthentication
    name = "provisioningKey"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(
            header_name="Authorization",
            token_prefix="Bearer",  # noqa: S106 - the scheme's name, not a secret
        )


class ChangesTokenScheme(ProvisioningKeyScheme):
    """The changes endpoint's token, documented as the provisioning key is."""

    target_class = ChangesTokenAuthentication
    name = "changesToken"
