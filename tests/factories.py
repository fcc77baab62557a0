"""factory-boy factories for the domain's models."""

import factory
from django.utils import timezone

from core import models


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.User

    email = factory.Sequence(lambda n: f"user{n}@example.org")
    sub = factory.Sequence(lambda n: f"sub-{n}")
    full_name = factory.Faker("name")


class MailDomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.MailDomain

    name = factory.Sequence(lambda n: f"domain{n}.example.org")


class MailDomainAccessFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.MailDomainAccess

    maildomain = factory.SubFactory(MailDomainFactory)
    user = factory.SubFactory(UserFactory)
    role = models.MailDomainAccess.Role.ADMIN
    source = models.MailDomainAccess.Source.MANUAL


class EntitlementSyncStateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.EntitlementSyncState

    user = factory.SubFactory(UserFactory)
    status = models.EntitlementSyncState.Status.OK
    requested_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyFunction(timezone.now)


class AccessAuditEntryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.AccessAuditEntry

    user = factory.SubFactory(UserFactory)
    maildomain_name = factory.Sequence(lambda n: f"audited{n}.example.org")
    action = models.AccessAuditEntry.Action.GRANTED
    trigger = "login"


class SyncRunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.SyncRun

    trigger = "periodic"
    status = models.SyncRun.Status.DONE
