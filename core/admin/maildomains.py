"""Mail domains and their accesses in the admin, with the per-domain resync action."""

from django import forms
from django.contrib import admin
from django.contrib.messages.constants import DEFAULT_LEVELS
from django.db.models import Count, Q, QuerySet

from core.admin.common import AccessInline, ResyncPermissionMixin
from core.entitlements import describe, request_resync
from core.models import MailDomain, MailDomainAccess, Trigger
from core.validators import normalize_domain_name


class MailDomainForm(forms.ModelForm):
    """Accepts a name in any case and with stray whitespace, stored normalised."""

    class Meta:
        model = MailDomain
        fields = ("name", "custom_attributes")

    def clean_name(self):
        return normalize_domain_name(self.cleaned_data["name"])


class MailDomainAccessInline(AccessInline):
    """The domain's users and their roles."""

    fk_name = "maildomain"


@admin.register(MailDomain)
class MailDomainAdmin(ResyncPermissionMixin, admin.ModelAdmin):
    """Mail domains with their accesses."""

    form = MailDomainForm
    ordering = ("name",)
    list_display = ("name", "admin_count", "created_at", "updated_at")
    search_fields = ("name",)
    date_hierarchy = "created_at"
    fields = ("id", "name", "custom_attributes", "created_at", "updated_at")
    readonly_fields = ("id", "created_at", "updated_at")
    inlines = [MailDomainAccessInline]
    actions = ["resync_domain_admins"]

    @admin.action(description="Resync this domain's admins", permissions=["request_resync"])
    def resync_domain_admins(self, request, queryset: QuerySet) -> None:
        """Start a per-domain resync run for each selected domain."""
        for maildomain in queryset:
            receipt = request_resync(maildomain=maildomain, trigger=Trigger.ADMIN)
            [notice] = describe(receipt)
            self.message_user(request, notice.text, DEFAULT_LEVELS[notice.level.upper()])
            if not receipt.sent:
                return

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
        return maildomain.admin_count  # type: ignore[attr-defined]  # get_queryset's annotation


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
