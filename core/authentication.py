"""OIDC login: users are found by their `sub`, never by email alone; a login requests a sync.

The provider's answers are input: a failed call or a malformed answer refuses the login, and
the claims pass one policy (`clean_login_claims`) before anything is stored.
"""

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import jwt
import requests
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import SuspiciousOperation, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.shortcuts import resolve_url
from mozilla_django_oidc.auth import OIDCAuthenticationBackend as BaseOIDCBackend

from core.entitlements import request_sync
from core.entitlements.factory import forwarded_claims

# The receipt's type, for annotations (tests/test_layers.py lists this reader of the package).
from core.entitlements.receipts import SyncReceipt
from core.models import EntitlementSyncState, Trigger, User
from core.validators import clean_email, has_control_characters, normalize_email

logger = logging.getLogger(__name__)

# The column's bound: a longer `sub` is no subject the user table can keep. (A CharField
# always has its max_length; the hints allow None, for other fields.)
MAX_SUBJECT_LENGTH: int = User._meta.get_field("sub").max_length  # type: ignore[assignment]
MAX_FULL_NAME_LENGTH = User._meta.get_field("full_name").max_length
# An OAuth error code (RFC 6749, 5.2) is logged when it looks like one; its description never
# is (a provider may quote the user's e-mail in it).
_OAUTH_ERROR = re.compile(r"[a-z_]{1,40}")


class LoginRefused(Exception):
    """A login the provider's answer does not allow; the text names no claim value."""


def clean_login_claims(claims: Any) -> dict[str, str]:
    """The claims a login may carry, cleaned: every login path (the OIDC callback,
    `simulate_login`) stores only these. LoginRefused when the sub or the e-mail is unusable.

    `sub`: a string of 1 to 255 characters; `email`: a valid address under the one e-mail
    normaliser; the name fields: strings, trimmed and bounded; the forwarded claims: only those
    with the shape the entitlements backend expects. A control character anywhere refuses.
    """
    if not isinstance(claims, dict):
        raise LoginRefused("the userinfo answer is not a JSON object")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUBJECT_LENGTH:
        raise LoginRefused(f"its sub claim is not a string of 1 to {MAX_SUBJECT_LENGTH} characters")
    if has_control_characters(sub):
        raise LoginRefused("its sub claim holds control characters")
    try:
        email = clean_email(claims.get("email"))
    except ValidationError:
        raise LoginRefused("its email claim is not a valid e-mail address") from None
    cleaned = {"sub": sub, "email": email}
    for field in settings.OIDC_USERINFO_FULLNAME_FIELDS:
        value = claims.get(field)
        if not isinstance(value, str):
            continue
        if has_control_characters(value):
            raise LoginRefused(f"its {field} claim holds control characters")
        cleaned[field] = value.strip()[:MAX_FULL_NAME_LENGTH]
    return {**cleaned, **forwarded_claims(claims)}


# Shown on the login page the refused person lands on: what happened and whom to ask, never
# which account holds the address.
EMAIL_TAKEN_MESSAGE = (
    "Your sign-in was refused: the e-mail address your identity provider gave is already used "
    "by another account of this service. Signing in again will not help: ask an administrator "
    "of this service to check the accounts that use your address."
)


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

    def authenticate(self, request, **kwargs):
        try:
            return super().authenticate(request, **kwargs)
        except LoginRefused as refusal:
            # The callback then redirects to the failure URL: a refused login, never a 500.
            logger.warning("OIDC login refused: %s", refusal)
            return None

    def get_token(self, payload):
        with _provider_call("token endpoint"):
            token_info = super().get_token(payload)
        if not isinstance(token_info, dict) or not isinstance(token_info.get("id_token"), str):
            raise LoginRefused("the token endpoint's answer holds no id token")
        return token_info

    def verify_token(self, token, **kwargs):
        with _provider_call("id token check"):
            return super().verify_token(token, **kwargs)

    def get_userinfo(self, access_token, id_token, payload):
        with _provider_call("userinfo endpoint"):
            claims = super().get_userinfo(access_token, id_token, payload)
        claims = clean_login_claims(claims)
        # OpenID Connect Core 5.3.2: the userinfo must be about the id token's subject.
        if claims["sub"] != payload.get("sub"):
            raise LoginRefused("the userinfo's sub is not the id token's")
        return claims

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
        # Case-blind: `ADMIN@…` is not a second account beside `admin@…` (a first login is
        # rare enough for a lookup that scans the user table).
        holder = (
            self.UserModel.objects.filter(email__iexact=email).values_list("pk", flat=True).first()
        )
        if holder is not None:
            self._refuse(holder)
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
            self._tell_refused()
            return None
        self.sync_request = request_login_sync(user=user, claims=claims)
        return user

    def update_user(self, user, claims):
        email = email_from_login(stored=user.email, claimed=claims.get("email", user.email))
        # Only a new e-mail can be another user's, checked case-blind as at a first login; an
        # unchanged one is not looked up (that lookup reads the whole user table).
        holder = None
        if email != user.email:
            holder = (
                self.UserModel.objects.filter(email__iexact=email)
                .exclude(pk=user.pk)
                .values_list("pk", flat=True)
                .first()
            )
        if holder is not None:
            self._refuse(holder)
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
            self._tell_refused()
            return None
        self.sync_request = request_login_sync(user=user, claims=claims)
        return user

    def _full_name(self, claims) -> str:
        parts = [claims.get(field, "") for field in settings.OIDC_USERINFO_FULLNAME_FIELDS]
        return " ".join(part for part in parts if part)[:MAX_FULL_NAME_LENGTH].strip()

    def _refuse(self, holder_id) -> None:
        """Refuse a login whose e-mail belongs to another user: the log names only their id."""
        logger.warning(
            "OIDC login refused: its e-mail belongs to user %s, who has another or no OIDC "
            "subject (see OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION in docs/operations.md)",
            holder_id,
        )
        self._tell_refused()

    def _tell_refused(self) -> None:
        """Tell the person, on the page the failed login lands on, why and whom to ask."""
        messages.error(self.request, EMAIL_TAKEN_MESSAGE)


def provider_logout_url(request) -> str:
    """Where logging out sends the browser (OIDC_OP_LOGOUT_URL_METHOD): the provider's
    end-session endpoint, so the provider's session ends too (RP-initiated logout, with the id
    token as hint and LOGOUT_REDIRECT_URL to come back to); LOGOUT_REDIRECT_URL itself for a
    session that did not start at the provider, or without OIDC_OP_LOGOUT_ENDPOINT."""
    back = resolve_url(settings.LOGOUT_REDIRECT_URL)
    id_token = request.session.get("oidc_id_token")
    if not settings.OIDC_OP_LOGOUT_ENDPOINT or not id_token:
        return back
    query = urlencode(
        {
            "id_token_hint": id_token,
            "post_logout_redirect_uri": request.build_absolute_uri(back),
            "client_id": settings.OIDC_RP_CLIENT_ID,
        }
    )
    separator = "&" if "?" in settings.OIDC_OP_LOGOUT_ENDPOINT else "?"
    return f"{settings.OIDC_OP_LOGOUT_ENDPOINT}{separator}{query}"


@contextmanager
def _provider_call(step: str) -> Iterator[None]:
    """Turn a failed call to the provider, or an answer OIDC does not allow, into LoginRefused
    naming the step and the HTTP status or error class (never a token, never a claim)."""
    try:
        yield
    except requests.HTTPError as error:
        raise LoginRefused(f"the {step} answered {_http_error(error.response)}") from None
    except requests.RequestException as error:
        raise LoginRefused(f"the {step} failed: {type(error).__name__}") from None
    except (SuspiciousOperation, jwt.PyJWTError, KeyError, TypeError, AttributeError) as error:
        raise LoginRefused(f"the {step} failed: {type(error).__name__}") from None


def _http_error(response: requests.Response | None) -> str:
    """An error answer as logged: its status and its OAuth error code, if it has one."""
    if response is None:
        return "an error"
    try:
        code = response.json().get("error")
    except (ValueError, AttributeError):
        code = None
    if isinstance(code, str) and _OAUTH_ERROR.fullmatch(code):
        return f"{response.status_code} {code}"
    return str(response.status_code)
