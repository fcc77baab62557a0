"""Held revocations in the admin: the release and discard actions, each confirmed first."""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.template.response import TemplateResponse
from django.utils.formats import date_format
from django.utils.timezone import localtime

from core.admin.common import ReadOnlyAdminMixin, ReleasePermissionMixin, counted
from core.entitlements import discard_held_revocations, release_held_revocations
from core.models import HeldRevocation
from core.selectors import count_pending


class HeldRevocationActionsMixin(ReleasePermissionMixin, admin.ModelAdmin):
    """Release and discard actions over the held revocations that `_held(queryset)` covers.

    Each asks for a confirmation that says what would happen (a dry run of the release).
    """

    def _held(self, queryset: QuerySet) -> QuerySet:
        raise NotImplementedError

    @admin.action(description="Release held revocations (re-checked)", permissions=["release"])
    def release_held(self, request, queryset: QuerySet):
        """Revoke the held accesses the users' last answers still do not name."""
        held = self._held(queryset)
        if request.POST.get("confirmed") != "yes":
            report = release_held_revocations(held=held, dry_run=True)
            return self._confirm(
                request,
                title="Release held revocations",
                summary=(
                    f"{_pending(held)}: {report.revoked} would be revoked, {report.kept} kept "
                    f"(the user's last answer names the domain again), {report.gone} already "
                    "gone."
                ),
                confirm_label="Yes, revoke them",
            )
        report = release_held_revocations(held=held, operator=request.user)
        self.message_user(
            request,
            f"Held revocations released: {report.revoked} revoked (audit trigger "
            f'"release"), {report.kept} kept, {report.gone} already gone.',
            messages.SUCCESS,
        )
        return None

    @admin.action(description="Discard held revocations (keep accesses)", permissions=["release"])
    def discard_held(self, request, queryset: QuerySet):
        """Keep the held accesses and close the held rows."""
        held = self._held(queryset)
        if request.POST.get("confirmed") != "yes":
            return self._confirm(
                request,
                title="Discard held revocations",
                summary=f"{_pending(held)} would be discarded: the accesses stay.",
                confirm_label="Yes, keep the accesses",
            )
        discarded = discard_held_revocations(held=held, operator=request.user)
        self.message_user(
            request,
            f"{counted(discarded, 'held revocation', 'held revocations')} discarded; "
            "accesses kept.",
            messages.SUCCESS,
        )
        return None

    def _confirm(self, request, *, title: str, summary: str, confirm_label: str):
        """The confirmation page, which posts the same action back with confirmed=yes."""
        return TemplateResponse(
            request,
            "admin/core/held_revocations_confirmation.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": title,
                "summary": summary,
                "confirm_label": confirm_label,
                "action": request.POST["action"],
                "select_across": request.POST.get("select_across") == "1",
                # As posted: the page's selection (with select_across, the whole filter counts).
                "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            },
        )


def _pending(held: QuerySet) -> str:
    """'1 pending held revocation', '3 pending held revocations'."""
    return counted(count_pending(held), "pending held revocation", "pending held revocations")


@admin.register(HeldRevocation)
class HeldRevocationAdmin(HeldRevocationActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Revocations held (a run's budget, an identity change); released or discarded by a person."""

    # Narrow enough for a 1,400-pixel window beside the filters: the run by its number (its
    # page says the rest), the resolution with when and by whom.
    list_display = ("created_at", "user", "maildomain_name", "reason", "run_shown", "resolved")
    # Filtered by run through the link on the run's page (a run filter would list every run).
    list_filter = ("resolution", "reason")
    list_select_related = ("user", "run", "resolved_by")
    search_fields = ("user__email", "maildomain_name")
    date_hierarchy = "created_at"
    actions = ["release_held", "discard_held"]

    @admin.display(description="run", ordering="run")
    def run_shown(self, held: HeldRevocation) -> str:
        return f"#{held.run_id}" if held.run_id else "-"

    @admin.display(description="resolution", ordering="resolution")
    def resolved(self, held: HeldRevocation) -> str:
        if held.resolution == HeldRevocation.Resolution.PENDING:
            return held.get_resolution_display()
        when = date_format(localtime(held.resolved_at), "DATETIME_FORMAT")
        who = f" by {held.resolved_by}" if held.resolved_by else ""
        return f"{held.get_resolution_display()}, {when}{who}"

    def _held(self, queryset: QuerySet) -> QuerySet:
        return queryset
