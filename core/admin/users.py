"""Users in the admin: their accesses, their sync state and audit trail, the resync action."""

from collections.abc import Sequence
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import forms as auth_forms
from django.contrib.messages.constants import DEFAULT_LEVELS
from django.db.models import QuerySet
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime

from core.admin.common import (
    AccessInline,
    ResyncPermissionMixin,
    claims_display,
    counted,
)
from core.entitlements import describe, request_sync
from core.models import EntitlementSyncState, Trigger, User
from core.selectors import audit_entries_of, get_sync_state, pending_held_revocations
from core.validators import normalize_email


class SyncStatusFilter(admin.ChoicesFieldListFilter):
    """The users list's filter on their sync state's status, titled as such."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.title = "sync status"


# A bigger selection is a job for a full resync, not for a web request sending one task each.
MAX_USERS_PER_RESYNC_ACTION = 100
# Latest audit rows shown on a user's page (the full trail is one link away).
_AUDIT_ROWS_SHOWN = 10


class NormalizedEmailMixin:
    """Normalise the email before the uniqueness check, as User.save() would after it."""

    cleaned_data: dict[str, Any]

    def clean_email(self):
        return normalize_email(self.cleaned_data["email"])


class UserCreationForm(NormalizedEmailMixin, auth_forms.AdminUserCreationForm):
    """Creates an operator account by email (OIDC users are created at login)."""

    class Meta:
        model = User
        fields = ("email", "full_name")
        field_classes: dict = {}


class UserChangeForm(NormalizedEmailMixin, auth_forms.UserChangeForm):
    """Edits a user; the password is only changed through its own form."""

    class Meta:
        model = User
        fields = "__all__"


class UserMailDomainAccessInline(AccessInline):
    """The user's roles on mail domains."""

    fk_name = "user"


@admin.register(User)
class UserAdmin(ResyncPermissionMixin, auth_admin.UserAdmin):
    """Users with their mail-domain accesses and the state of their entitlements sync."""

    form = UserChangeForm
    add_form = UserCreationForm
    list_display = ("email", "full_name", "sub", "is_staff", "is_active", "sync_status")
    list_filter = (
        "is_staff",
        "is_superuser",
        "is_active",
        ("sync_state__status", SyncStatusFilter),
    )
    list_select_related = ("sync_state",)
    search_fields = ("email", "sub", "full_name")
    ordering = ("email",)
    readonly_fields = (
        "id",
        "last_login",
        "created_at",
        "updated_at",
        "sync_state_summary",
        "claim_names",
        "claim_values",
        "held_revocations",
        "audit_trail",
    )
    fieldsets = (
        (None, {"fields": ("id", "email", "password")}),
        ("Identity", {"fields": ("sub", "full_name")}),
        (
            "Entitlements sync",
            {
                "fields": (
                    "sync_state_summary",
                    "claim_names",
                    "held_revocations",
                    "audit_trail",
                )
            },
        ),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "created_at", "updated_at")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "full_name", "usable_password", "password1", "password2"),
            },
        ),
    )
    inlines = [UserMailDomainAccessInline]
    actions = ["resync_entitlements"]

    def get_fieldsets(self, request, obj=None):
        """Claim values (e.g. a siret, an organisation's id) show to superusers only."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or not request.user.is_superuser:
            return fieldsets
        return [
            (name, {**options, "fields": _with_claim_values(options["fields"])})
            for name, options in fieldsets
        ]

    @admin.action(description="Resync entitlements", permissions=["request_resync"])
    def resync_entitlements(self, request, queryset: QuerySet) -> None:
        """Request a sync of each selected user through the one door (interactive queue)."""
        users = list(queryset[: MAX_USERS_PER_RESYNC_ACTION + 1])
        if len(users) > MAX_USERS_PER_RESYNC_ACTION:
            self.message_user(
                request,
                f"Select at most {counted(MAX_USERS_PER_RESYNC_ACTION, 'user', 'users')}, or "
                "start a full resync (Sync runs, Resync all admins).",
                messages.ERROR,
            )
            return
        # Outside a transaction (the changelist runs in autocommit) each task is sent here and
        # now, so each outcome is final.
        receipts = [request_sync(user=user, trigger=Trigger.ADMIN) for user in users]
        for notice in describe(*receipts):
            self.message_user(request, notice.text, DEFAULT_LEVELS[notice.level.upper()])

    @admin.display(description="sync", ordering="sync_state__status")
    def sync_status(self, user: User) -> str:
        state = getattr(user, "sync_state", None)  # a missing row raises an AttributeError
        return state.get_status_display() if state else EntitlementSyncState.Status.NEVER.label

    @admin.display(description="sync state")
    def sync_state_summary(self, user: User) -> str:
        state = get_sync_state(user=user)
        if state is None:
            return EntitlementSyncState.Status.NEVER.label
        rows = [
            ("Status", state.get_status_display()),
            ("Error code", state.error_code or "-"),
            ("Requested", _when(state.requested_at)),
            ("Started", _when(state.started_at)),
            ("Finished", _when(state.finished_at)),
            ("Last trigger", state.get_last_trigger_display() or "-"),
            ("Last task id", state.last_task_id or "-"),
            ("Entitled domains", ", ".join(state.entitled_domains) or "-"),
            ("Access ended since", _when(state.access_ended_since)),
        ]
        return format_html(
            "<table>{}</table>",
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
        )

    @admin.display(description="forwarded claims")
    def claim_names(self, user: User) -> str:
        """Names only: enough to see whether login stored what the backend needs."""
        return claims_display(get_sync_state(user=user), with_values=False)

    @admin.display(description="forwarded claims")
    def claim_values(self, user: User) -> str:
        """Names and values, for superusers."""
        return claims_display(get_sync_state(user=user), with_values=True)

    @admin.display(description="held revocations")
    def held_revocations(self, user: User) -> str:
        pending = pending_held_revocations(user=user)
        if not pending:
            return "-"
        url = reverse("admin:core_heldrevocation_changelist") + f"?user__id__exact={user.pk}"
        return format_html(
            '<a href="{}">{} pending</a>: {} ({})',
            url,
            len(pending),
            ", ".join(sorted(held.maildomain_name for held in pending)),
            ", ".join(sorted({held.get_reason_display() for held in pending})),
        )

    @admin.display(description="audit trail")
    def audit_trail(self, user: User) -> str:
        entries = audit_entries_of(user=user)
        count = entries.count()
        url = reverse("admin:core_accessauditentry_changelist") + f"?user__id__exact={user.pk}"
        changes = counted(count, "access change", "access changes")
        link = format_html('<a href="{}">{} by the sync</a>', url, changes)
        if not count:
            return link
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    _when(entry.created_at),
                    entry.get_action_display(),
                    entry.maildomain_name,
                    entry.get_trigger_display(),
                    entry.task_id,
                )
                for entry in entries[:_AUDIT_ROWS_SHOWN]
            ),
        )
        return format_html(
            "{}<table><tr><th>when</th><th>action</th><th>domain</th><th>trigger</th>"
            "<th>task id</th></tr>{}</table>",
            link,
            rows,
        )


def _when(moment) -> str:
    """A time as the rest of the admin shows it (local time, no microseconds), or "-"."""
    return date_format(localtime(moment), "DATETIME_FORMAT") if moment else "-"


def _with_claim_values(fields: Sequence[Any]) -> tuple:
    """A superuser's fields: the claim names replaced by the names with their values."""
    return tuple("claim_values" if field == "claim_names" else field for field in fields)
