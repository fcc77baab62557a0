"""What the admin's pages share: read-only and permission mixins, filters, message helpers."""

from django.contrib import admin
from django.utils.translation import ngettext

# The configured backend's claim names, shown beside the stored claims: configuration, read
# where it is built (tests/test_layers.py lists this exception to the door).
from core.entitlements.factory import forwarded_claim_names
from core.models import EntitlementSyncState, MailDomainAccess
from core.selectors import error_codes_in_use


class ReadOnlyAdminMixin:
    """For records only the system writes (sync bookkeeping, audit, runs): look, never edit."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ResyncPermissionMixin:
    """Actions with permissions=["request_resync"] need core.request_resync (SyncRun's)."""

    def has_request_resync_permission(self, request) -> bool:
        return request.user.has_perm("core.request_resync")


class ReleasePermissionMixin:
    """Actions with permissions=["release"] need core.release_heldrevocation."""

    def has_release_permission(self, request) -> bool:
        return request.user.has_perm("core.release_heldrevocation")


class AccessInline(admin.TabularInline):
    """Accesses on the page of their user or their domain (`fk_name`), showing the other side.

    Headed by the model's verbose names: a verbose_name set here alone would make Django
    derive the plural by adding an "s" ("mail domain accesss").
    """

    model = MailDomainAccess
    extra = 0
    readonly_fields = ("created_at",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        other = "maildomain" if cls.fk_name == "user" else "user"
        cls.fields = (other, "role", "source", "created_at")
        cls.autocomplete_fields = (other,)


class ErrorCodeFilter(admin.SimpleListFilter):
    """The error codes the records hold, plus "none": no empty choice for rows without one."""

    title = "error code"
    parameter_name = "error_code"
    _NONE = "__none__"

    def lookups(self, request, model_admin):
        codes = error_codes_in_use(model=model_admin.model)
        return [*((code, code) for code in codes), (self._NONE, "none")]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(error_code="" if self.value() == self._NONE else self.value())


def counted(count: int, singular: str, plural: str) -> str:
    """'1 user', '2 users': a count with the noun that agrees with it."""
    return f"{count} {ngettext(singular, plural, count)}"


def claims_display(state: EntitlementSyncState | None, *, with_values: bool) -> str:
    """The forwarded claims stored at login (names, values only when asked), beside the names
    the configured backend forwards, so a missing one shows."""
    claims = state.forwarded_claims if state else {}
    if with_values:
        stored = ", ".join(f"{name}={value}" for name, value in sorted(claims.items()))
    else:
        stored = ", ".join(sorted(claims))
    forwarded = ", ".join(forwarded_claim_names()) or "none"
    return f"{stored or 'none'} (the backend forwards: {forwarded})"
