"""Creating mail domains and managing their accesses by hand."""

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from core.models import MailDomain, MailDomainAccess, User
from core.services.errors import AlreadyExistsError, InvalidDomainNameError
from core.validators import clean_domain_name


def create_maildomain(*, name: str, creator: User) -> MailDomain:
    """Create a mail domain and make its creator a manual ADMIN of it."""
    try:
        name = clean_domain_name(name.strip())
    except ValidationError:
        raise InvalidDomainNameError(
            "Enter a valid domain name, such as example.org (IDNs in punycode).", field="name"
        ) from None
    try:
        # The savepoint keeps the caller's transaction usable when a concurrent request
        # created the same name between our check and our insert.
        with transaction.atomic():
            maildomain = MailDomain.objects.create(name=name)
            MailDomainAccess.objects.create(
                maildomain=maildomain,
                user=creator,
                role=MailDomainAccess.Role.ADMIN,
                source=MailDomainAccess.Source.MANUAL,
            )
    except IntegrityError:
        raise AlreadyExistsError(
            "A mail domain with this name already exists.", field="name"
        ) from None
    return maildomain


def create_maildomain_access(
    *, maildomain: MailDomain, user: User, role: str = MailDomainAccess.Role.ADMIN
) -> MailDomainAccess:
    """Give a user a manual role on a mail domain; refuse a second access for the same pair."""
    try:
        with transaction.atomic():
            return MailDomainAccess.objects.create(
                maildomain=maildomain, user=user, role=role, source=MailDomainAccess.Source.MANUAL
            )
    except IntegrityError:
        raise AlreadyExistsError(
            "This user already has an access to this mail domain.", field="user"
        ) from None


def delete_maildomain_access(*, access: MailDomainAccess) -> None:
    """Remove an access, whatever made it (a sync-made one returns at the next sync if the
    entitlements service still names the domain)."""
    access.delete()
