"""Django admin for operators: users and their rights, mail domains, the sync's records."""

from django import forms
from django.contrib import admin
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import forms as auth_forms
from django.db.models import Count, Q
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    MailDomain,
    MailDomainAccess,
    SyncRun,
    User,
    normalize_email,
)
from core.validators import normalize_domain_name


class ReadOnlyAdminMixin:
    """For records only the system writes (sync bookkeeping, audit, runs): look, never edit."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- Users ------------------------------------------------------------------------------------


class NormalizedEmailMixin:
    """Normalise the email before the uniqueness check, as User.save() would after it."""

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


class UserMailDomainAccessInline(admin.TabularInline):
    """The user's roles on mail domains, with what made each one."""

    model = MailDomainAccess
    fk_name = "user"
    extra = 0
    fields = ("maildomain", "role", "source", "created_at")
    readonly_fields = ("created_at",)
    autocomplete_fields = ("maildomain",)
    verbose_name = "mail domain access"


@admin.register(User)
class UserAdmin(auth_admin.UserAdmin):
    """Users with their mail-domain accesses and the state of their entitlements sync."""

    form = UserChangeForm
    add_form = UserCreationForm
    list_display = ("email", "full_name", "sub", "is_staff", "is_active", "sync_status")
    list_filter = ("is_staff", "is_superuser", "is_active", "sync_state__status")
    list_select_related = ("sync_state",)
    search_fields = ("email", "sub", "full_name")
    ordering = ("email",)
    readonly_fields = (
        "id",
        "last_login",
        "created_at",
        "updated_at",
        "sync_state_summary",
        "audit_trail",
    )
    fieldsets = (
        (None, {"fields": ("id", "email", "password")}),
        ("Identity", {"fields": ("sub", "full_name")}),
        ("Entitlements sync", {"fields": ("sync_state_summary", "audit_trail")}),
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

    @admin.display(description="sync", ordering="sync_state__status")
    def sync_status(self, user: User) -> str:
        state = getattr(user, "sync_state", None)  # a missing row raises an AttributeError
        return state.get_status_display() if state else EntitlementSyncState.Status.NEVER.label

    @admin.display(description="sync state")
    def sync_state_summary(self, user: User) -> str:
        state = EntitlementSyncState.objects.filter(user=user).first()
        if state is None:
            return EntitlementSyncState.Status.NEVER.label
        rows = [
            ("Status", state.get_status_display()),
            ("Error code", state.error_code or "-"),
            ("Requested", state.requested_at or "-"),
            ("Started", state.started_at or "-"),
            ("Finished", state.finished_at or "-"),
            ("Last trigger", state.last_trigger or "-"),
            ("Last task id", state.last_task_id or "-"),
            ("Entitled domains", ", ".join(state.entitled_domains) or "-"),
        ]
        return format_html(
            "<table>{}</table>",
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
        )

    @admin.display(description="audit trail")
    def audit_trail(self, user: User) -> str:
        count = AccessAuditEntry.objects.filter(user=user).count()
        url = reverse("admin:core_accessauditentry_changelist") + f"?user__id__exact={user.pk}"
        return format_html('<a href="{}">{} access change(s) by the sync</a>', url, count)


# --- Mail domains and accesses ----------------------------------------------------------------


class MailDomainForm(forms.ModelForm):
    """Accepts a name in any case and with stray whitespace, stored normalised."""

    class Meta:
        model = MailDomain
        fields = ("name", "custom_attributes")

    def clean_name(self):
        return normalize_domain_name(self.cleaned_data["name"])


class MailDomainAccessInline(admin.TabularInline):
    """The domain's users and their roles, with what made each one."""

    model = MailDomainAccess
    fk_name = "maildomain"
    extra = 0
    fields = ("user", "role", "source", "created_at")
    readonly_fields = ("created_at",)
    autocomplete_fields = ("user",)


@admin.register(MailDomain)
class MailDomainAdmin(admin.ModelAdmin):
    """Mail domains with their accesses."""

    form = MailDomainForm
    ordering = ("name",)
    list_display = ("name", "admin_count", "created_at", "updated_at")
    search_fields = ("name",)
    date_hierarchy = "created_at"
    fields = ("id", "name", "custom_attributes", "created_at", "updated_at")
    readonly_fields = ("id", "created_at", "updated_at")
    inlines = [MailDomainAccessInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                admin_count=Count("accesses", filter=Q(accesses__role=MailDomainAccess.Role.ADMIN))
            )
        )

    @admin.display(description="admins", ordering="admin_count")
    def admin_count(self, maildomain: MailDomain) -> int:
        return maildomain.admin_count


@admin.register(MailDomainAccess)
class MailDomainAccessAdmin(admin.ModelAdmin):
    """Every access, to find who administers what and what granted it."""

    list_display = ("user", "maildomain", "role", "source", "created_at")
    list_filter = ("role", "source")
    list_select_related = ("user", "maildomain")
    search_fields = ("user__email", "user__full_name", "maildomain__name")
    autocomplete_fields = ("user", "maildomain")
    date_hierarchy = "created_at"
    fields = ("id", "user", "maildomain", "role", "source", "created_at", "updated_at")
    readonly_fields = ("id", "created_at", "updated_at")


# --- The sync's records -----------------------------------------------------------------------


@admin.register(EntitlementSyncState)
class EntitlementSyncStateAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Where each user's entitlements sync stands; written by the sync only."""

    list_display = (
        "user",
        "status",
        "error_code",
        "requested_at",
        "finished_at",
        "last_trigger",
    )
    list_filter = ("status", "error_code", "last_trigger")
    list_select_related = ("user",)
    search_fields = ("user__email", "user__sub", "last_task_id")
    date_hierarchy = "requested_at"


@admin.register(AccessAuditEntry)
class AccessAuditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Every access the sync granted or revoked; append-only."""

    list_display = (
        "created_at",
        "user",
        "maildomain_name",
        "action",
        "role",
        "trigger",
        "task_id",
    )
    list_filter = ("action", "trigger", "role")
    list_select_related = ("user",)
    search_fields = ("user__email", "maildomain_name", "task_id")
    date_hierarchy = "created_at"


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Admin-wide resyncs, their progress while they run, and their history."""

    list_display = (
        "started_at",
        "scope",
        "maildomain_name",
        "trigger",
        "status",
        "users_enqueued",
        "users_done",
        "users_changed",
        "users_failed",
        "users_skipped",
        "finished_at",
    )
    list_filter = ("status", "scope", "trigger")
    search_fields = ("maildomain_name", "task_id")
    date_hierarchy = "started_at"
