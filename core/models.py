"""The domain's tables: users, mail domains, their admin accesses, and the sync's bookkeeping."""

import uuid
from datetime import datetime
from typing import ClassVar

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.db.models import Q
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Lower

from core.querysets import SyncStateQuerySet
from core.run_endings import why_run_ended
from core.validators import normalize_domain_name, normalize_email, validate_domain_name


class BaseModel(models.Model):
    """UUID primary key and timestamps, shared by the domain's main tables."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class Trigger(models.TextChoices):
    """What started a sync or a run; recorded on the sync state, the audit trail and runs."""

    LOGIN = "login", "Login"
    ADMIN = "admin", "Django admin"
    COMMAND = "command", "Command line"
    PERIODIC = "periodic", "Periodic resync"
    SWEEP = "sweep", "Sweep of requests that never ran"
    PROVISIONING = "provisioning", "Provisioning API"
    RELEASE = "release", "Release of held revocations"
    # A task sent by hand outside the app's own doors (Flower's apply, `celery call`). Its
    # stored value stays "manual"; not to be confused with MailDomainAccess.Source.MANUAL.
    HAND_SENT_TASK = "manual", "By hand (Flower, celery call)"
    # DeployCenter's webhook said something changed for the user or their organisation.
    CHANGE_SIGNAL = "change_signal", "Change signalled by DeployCenter"


class UserManager(BaseUserManager["User"]):
    """Creates users keyed by email; OIDC users also carry their `sub`."""

    use_in_migrations = True

    def create_user(self, email, password=None, **extra_fields):
        user = self.model(email=normalize_email(email), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email, password=None, **extra_fields):
        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra_fields)


class User(AbstractBaseUser, PermissionsMixin, BaseModel):
    """A person: created at their first OIDC login, or by hand for operators."""

    sub = models.CharField(
        "OIDC subject",
        max_length=255,
        unique=True,
        null=True,
        blank=True,
        help_text="Stable identifier given by the OIDC provider.",
    )
    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=255, blank=True)
    is_staff = models.BooleanField(
        default=False, help_text="May log into the Django admin and create mail domains."
    )
    is_active = models.BooleanField(default=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        ordering = ["email"]
        # The admin's list filters: the rare value of each flag is indexed, not the common one.
        indexes = [
            models.Index(fields=["is_staff"], condition=Q(is_staff=True), name="user_staff"),
            models.Index(
                fields=["is_superuser"], condition=Q(is_superuser=True), name="user_superuser"
            ),
            models.Index(fields=["is_active"], condition=Q(is_active=False), name="user_inactive"),
        ]

    def __str__(self):
        return self.email

    def save(self, *args, **kwargs):
        self.email = normalize_email(self.email)
        super().save(*args, **kwargs)


class MailDomain(BaseModel):
    """A mail domain; its name is stored lower-case and validated."""

    name = models.CharField(max_length=253, unique=True, validators=[validate_domain_name])
    custom_attributes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(name=Lower("name")), name="maildomain_name_lowercase"
            ),
        ]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        # The shared normaliser: str.lower() would turn the Kelvin sign into an ASCII "k".
        self.name = normalize_domain_name(self.name)
        super().save(*args, **kwargs)


class MailDomainAccess(BaseModel):
    """A user's role on a mail domain, made by hand or by the entitlements sync."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Administrator"

    class Source(models.TextChoices):
        MANUAL = "manual", "Manual"
        ENTITLEMENTS = "entitlements", "Entitlements sync"

    # No index of their own: (maildomain, user) and (user, source) start with them (0011).
    maildomain = models.ForeignKey(MailDomain, models.CASCADE, "accesses", db_index=False)
    user = models.ForeignKey(User, models.CASCADE, "maildomain_accesses", db_index=False)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.ADMIN)
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.MANUAL)

    class Meta:
        verbose_name_plural = "mail domain accesses"
        constraints = [
            models.UniqueConstraint(fields=["maildomain", "user"], name="unique_maildomain_user"),
        ]
        indexes = [models.Index(fields=["user", "source"])]

    def __str__(self):
        return f"{self.user} {self.role} of {self.maildomain} ({self.source})"


class EntitlementSyncState(models.Model):
    """One row per user: what the next sync needs and what the last one found."""

    class Status(models.TextChoices):
        NEVER = "never", "Never synced"
        PENDING = "pending", "Pending"
        OK = "ok", "Up to date"
        NO_INFORMATION = "no_information", "No information upstream"
        UNAVAILABLE = "unavailable", "Upstream unavailable"
        INVALID = "invalid", "Invalid upstream answer"
        ERROR = "error", "Error"
        # Not synced and not a failure: the user cannot be asked (unknown, or another sync of
        # theirs is running and serves the request).
        SKIPPED = "skipped", "Skipped"
        # The answer would have removed every sync-made access right after the e-mail sent
        # upstream changed: those revocations wait for an operator (error code identity_changed).
        REVOCATIONS_HELD = "revocations_held", "Revocations held for an operator"
        # The organisation's subscription ended upstream (not_activated): nothing is granted
        # from the old list; the rights go after a confirmation window (access_ended_since).
        ACCESS_ENDED = "access_ended", "Access ended upstream"

    user = models.OneToOneField(
        User, on_delete=models.CASCADE, primary_key=True, related_name="sync_state"
    )
    # Claims the backend forwards upstream (e.g. siret), stored at login. Never tokens.
    forwarded_claims = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEVER)
    error_code = models.CharField(max_length=64, blank=True)
    requested_at = models.DateTimeField(null=True, blank=True)
    # When a task was last put on the broker for this user; repeated requests inside the
    # dedup window are collapsed into that one task.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Every domain named by the last authoritative answer, provisioned here or not yet.
    entitled_domains = models.JSONField(default=list, blank=True)
    answer_fingerprint = models.CharField(max_length=64, blank=True)
    # A digest of the e-mail sent upstream with the last authoritative answer applied: an
    # answer that would remove every access right after it changed is held (identity rule).
    upstream_identity = models.CharField(max_length=64, blank=True)
    # Since when the upstream has answered that the user's organisation no longer has the
    # service (not_activated); cleared by the next authoritative answer.
    access_ended_since = models.DateTimeField(null=True, blank=True)
    last_trigger = models.CharField(max_length=32, choices=Trigger.choices, blank=True)
    last_task_id = models.CharField(max_length=255, blank=True)
    # When an authoritative answer last confirmed the user's rights (applied, or unchanged):
    # how fresh their admin rights are (core/selectors.py, admin_freshness).
    rights_confirmed_at = models.DateTimeField(null=True, blank=True)

    objects = SyncStateQuerySet.as_manager()

    class Meta:
        # One per filter of the admin's list, so a filtered page reads an index at a million.
        indexes = [
            models.Index(fields=["status"]),
            models.Index(fields=["requested_at"]),
            # An organisation's change signal finds its users by their stored siret claim.
            models.Index(
                KeyTextTransform("siret", "forwarded_claims"), name="sync_state_siret_claim"
            ),
            # The admins' freshness (core/selectors.py admin_freshness): only admins' rows.
            models.Index(
                fields=["rights_confirmed_at"],
                condition=~Q(entitled_domains=[]),
                name="syncstate_admin_confirmed",
            ),
            # The trigger filter, and a run page's curve (a trigger's syncs ended in a window).
            models.Index(fields=["last_trigger", "finished_at"], name="syncstate_trigger_finished"),
            # Most rows have no error code: only those with one are indexed.
            models.Index(
                fields=["error_code"], condition=~Q(error_code=""), name="syncstate_error_code"
            ),
        ]

    def __str__(self):
        return f"sync state of {self.user_id}: {self.status}"

    def is_running(self) -> bool:
        """Whether a sync has started and not finished since (as SyncStateQuerySet.running)."""
        return self.started_at is not None and (
            self.finished_at is None or self.finished_at < self.started_at
        )

    def is_served(self, requested_at: datetime | None = None) -> bool:
        """Whether a sync started at or after the request: the latest one recorded, or the one
        made at `requested_at` (as SyncStateQuerySet.unserved, negated)."""
        requested_at = requested_at or self.requested_at
        return bool(requested_at and self.started_at and self.started_at >= requested_at)


class AccessAuditEntry(models.Model):
    """Append-only trail of every access the sync granted or revoked."""

    class Action(models.TextChoices):
        GRANTED = "granted", "Granted"
        REVOKED = "revoked", "Revoked"

    # No index of its own: (user, -created_at) starts with it (0011).
    user = models.ForeignKey(
        User, models.SET_NULL, "access_audit_entries", null=True, db_index=False
    )
    # Names, not foreign keys, so the trail outlives deleted domains.
    maildomain_name = models.CharField(max_length=253)
    role = models.CharField(max_length=20, default=MailDomainAccess.Role.ADMIN)
    action = models.CharField(max_length=10, choices=Action.choices)
    trigger = models.CharField(max_length=32, choices=Trigger.choices)
    task_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "access audit entries"
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self):
        return f"{self.action} {self.role} of {self.maildomain_name} ({self.trigger})"


class SyncRun(models.Model):
    """One run of an admin-wide resync (all admins, or one domain's), updated as it progresses."""

    class Scope(models.TextChoices):
        ALL = "all", "All admins"
        DOMAIN = "domain", "One domain"
        ORGANISATION = "organisation", "One organisation"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped (another run in progress)"

    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.ALL)
    maildomain_name = models.CharField(max_length=253, blank=True)
    # The organisation of an "organisation" run: its users are those whose stored siret
    # claim is this one.
    organization_siret = models.CharField(max_length=64, blank=True)
    trigger = models.CharField(max_length=32, choices=Trigger.choices)
    task_id = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    users_enqueued = models.PositiveIntegerField(default=0)
    users_done = models.PositiveIntegerField(default=0)
    users_changed = models.PositiveIntegerField(default=0)
    users_failed = models.PositiveIntegerField(default=0)
    users_skipped = models.PositiveIntegerField(default=0)
    # Not asked: the run stopped (configuration error) before their turn.
    users_not_run = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    # When a batch (or the fan-out) last reported: a running run silent for
    # ENTITLEMENTS_RUN_STALL_SECONDS lost its tasks and is closed.
    progressed_at = models.DateTimeField(null=True, blank=True)
    # The revocation budget (core/entitlements/revocation_budget.py): the accesses the sync could
    # revoke when the run started, how many of them the run may revoke, how many it did, and
    # whether it reached its budget and held its further revocations.
    revocable_accesses = models.PositiveIntegerField(default=0)
    revoke_budget = models.PositiveIntegerField(default=0)
    accesses_revoked = models.PositiveIntegerField(default=0)
    budget_reached = models.BooleanField(default=False)

    class Meta:
        ordering = ["-started_at"]
        permissions = [("request_resync", "Can start entitlements resyncs from the admin")]

    def __str__(self):
        return f"{self.scope} resync {self.started_at:%Y-%m-%d %H:%M} ({self.status})"

    def why_it_ended(self) -> str:
        """Why the run ended as it did, in the words the admin and the command use; "" for a
        run without an error code."""
        return why_run_ended(error_code=self.error_code)


class CountedBatch(models.Model):
    """A batch's delivery (its task id and try) counted in its run, written in the count's own
    transaction: a batch delivered again, or killed while counting, counts exactly once."""

    delivery = models.CharField(max_length=300, primary_key=True)
    run = models.ForeignKey(SyncRun, models.CASCADE, "counted_batches")

    def __str__(self):
        return f"batch {self.delivery} counted in run {self.run_id}"


class HeldRevocation(models.Model):
    """A revocation the sync did not apply: over a run's budget, or right after an identity change.

    The access stays until an operator releases the revocation (it is applied if the user's
    last answer still does not name the domain) or discards it (the access is kept).
    """

    class Reason(models.TextChoices):
        RUN_BUDGET = "run_budget", "Over the run's revocation budget"
        IDENTITY_CHANGED = "identity_changed", "All accesses lost right after the e-mail changed"

    class Resolution(models.TextChoices):
        PENDING = "pending", "Pending"
        REVOKED = "revoked", "Released: revoked"
        KEPT = "kept", "Released: kept, the last answer names the domain again"
        GONE = "gone", "Released: the access was already gone"
        DISCARDED = "discarded", "Discarded: access kept"

    # The run whose budget held it; none for a hold outside a run (an identity change).
    run = models.ForeignKey(SyncRun, models.CASCADE, "held_revocations", null=True, blank=True)
    reason = models.CharField(max_length=20, choices=Reason.choices, default=Reason.RUN_BUDGET)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="held_revocations")
    # A name, as in the audit trail: the row must outlive a deleted domain.
    maildomain_name = models.CharField(max_length=253)
    created_at = models.DateTimeField(auto_now_add=True)
    resolution = models.CharField(
        max_length=10, choices=Resolution.choices, default=Resolution.PENDING
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        permissions = [("release_heldrevocation", "Can release or discard held revocations")]
        constraints = [
            # A later run holding the same revocation again adds no second pending row.
            models.UniqueConstraint(
                fields=["user", "maildomain_name"],
                condition=models.Q(resolution="pending"),
                name="unique_pending_held_revocation",
            ),
        ]

    def __str__(self):
        return f"held revocation of {self.maildomain_name} ({self.resolution})"


# The sync statuses a run counts as failed (its category `failed`, SyncResult.run_category).
FAILED_SYNC_STATUSES = frozenset(
    {
        EntitlementSyncState.Status.INVALID,
        EntitlementSyncState.Status.ERROR,
        EntitlementSyncState.Status.UNAVAILABLE,
    }
)
