"""manage.py simulate_login: run the post-login path of an OIDC login without a provider."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from core.authentication import LoginRefused, OIDCAuthenticationBackend, clean_login_claims
from core.entitlements import describe
from core.entitlements.factory import forwarded_claim_names
from core.models import EntitlementSyncState, User
from core.validators import clean_email


class Command(BaseCommand):
    help = (
        "Log a user in as the OIDC callback would after the provider answered: create or "
        "update the user from the claims, store the forwarded claims, request a sync."
    )

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument(
            "--claim",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="an extra userinfo claim, e.g. --claim siret=12345678900017 (repeatable)",
        )

    def handle(self, *args, **options):
        try:
            email = clean_email(options["email"])
        except ValidationError:
            raise CommandError(f"{options['email']!r} is not an e-mail address.") from None
        given = _parse_claims(options["claim"])
        # The claim policy of the OIDC callback, so this path stores nothing a login would not.
        try:
            claims = clean_login_claims({**given, "email": email, "sub": _subject_for(email)})
        except LoginRefused as refusal:
            raise CommandError(f"An OIDC login would be refused: {refusal}.") from None
        for name in forwarded_claim_names():
            if name in given and name not in claims:
                self.stderr.write(f"Claim {name} not stored: not the shape the backend expects.")
        backend = OIDCAuthenticationBackend()
        if not backend.verify_claims(claims):
            raise CommandError("These claims would fail verification (an email is required).")
        # The same steps as mozilla-django-oidc's get_or_create_user, inside one request's
        # transaction: the sync task is sent when it commits.
        with transaction.atomic():
            found = backend.filter_users_by_claims(claims).first()
            user = backend.update_user(found, claims) if found else backend.create_user(claims)
        if user is None:
            # The backend refuses a login whose e-mail another user took meanwhile (a race).
            raise CommandError(
                "The login was refused: its e-mail belongs to another user (the log says so)."
            )
        state = EntitlementSyncState.objects.get(user=user)
        self.stdout.write(f"Logged in {user.email} (sub {user.sub}).")
        self.stdout.write(f"Stored forwarded claims: {state.forwarded_claims or 'none'}")
        assert backend.sync_request is not None, "a login that makes its user requests a sync"
        for notice in describe(backend.sync_request):
            self.stdout.write(notice.text)


def _subject_for(email: str) -> str:
    """The user's OIDC subject, made up (and kept) for a user who never logged in by OIDC."""
    user = User.objects.filter(email=email).first()
    if user is None:
        return f"simulated:{email}"
    if not user.sub:
        user.sub = f"simulated:{email}"
        user.save(update_fields=["sub", "updated_at"])
    return user.sub


def _parse_claims(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE pairs as a dict; CommandError on a malformed one."""
    claims = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name.strip():
            raise CommandError(f"--claim wants NAME=VALUE, got {pair!r}")
        claims[name.strip()] = value
    return claims
