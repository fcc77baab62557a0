"""The sync's records in the admin: sync states, the audit trail, and runs with "resync all"."""

from django.contrib import admin
from django.contrib.messages.constants import DEFAULT_LEVELS
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.http import require_http_methods

from core.admin.common import (
    ErrorCodeFilter,
    ReadOnlyAdminMixin,
    ResyncPermissionMixin,
    claims_display,
    counted,
)
from core.admin.held_revocations import HeldRevocationActionsMixin
from core.admin.run_chart import run_chart
from core.entitlements import describe, request_resync, upstream_status
from core.models import AccessAuditEntry, EntitlementSyncState, HeldRevocation, SyncRun, Trigger
from core.selectors import count_pending, held_revocations_of_runs, running_full_run


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
        "access_ended_since",
    )
    list_filter = ("status", ErrorCodeFilter, "last_trigger")
    list_select_related = ("user",)
    search_fields = ("user__email", "user__sub", "last_task_id")
    date_hierarchy = "requested_at"
    # Claim values (e.g. a siret) show to superusers only, as on the user's page.
    exclude = ("forwarded_claims",)

    def get_readonly_fields(self, request, obj=None):
        return ("claim_values",) if request.user.is_superuser else ("claim_names",)

    @admin.display(description="forwarded claims")
    def claim_names(self, state: EntitlementSyncState) -> str:
        return claims_display(state, with_values=False)

    @admin.display(description="forwarded claims")
    def claim_values(self, state: EntitlementSyncState) -> str:
        return claims_display(state, with_values=True)


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
class SyncRunAdmin(
    ResyncPermissionMixin, HeldRevocationActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin
):
    """Admin-wide resyncs, their progress while they run, their history, and the button that
    starts a full resync."""

    change_list_template = "admin/core/syncrun/change_list.html"
    # Narrow enough for a 1,400-pixel window beside the filters: the scope with its domain, the
    # status with its error code, the user counters in one column (every field is on the page).
    list_display = (
        "id",
        "started_at",
        "scope_shown",
        "trigger",
        "status_shown",
        # Users counted (done, failed, skipped) over users enqueued.
        "progress",
        "counters",
        "revocations",
        "pending_held",
        "finished_at",
    )
    list_filter = ("status", "scope", "trigger", ErrorCodeFilter, "budget_reached")
    search_fields = ("maildomain_name", "task_id")
    date_hierarchy = "started_at"
    # Every field, in reading order: started_at is not editable, so the admin leaves it out of
    # the page unless it is named here.
    fields = (
        "scope",
        "maildomain_name",
        "trigger",
        "task_id",
        "status",
        "error_code",
        "why_it_ended",
        "started_at",
        "finished_at",
        "users_enqueued",
        "users_done",
        "users_changed",
        "users_failed",
        "users_skipped",
        "users_not_run",
        "revocable_accesses",
        "revoke_budget",
        "accesses_revoked",
        "budget_reached",
        "held_revocations_link",
        "progress_chart",
    )
    readonly_fields = ("started_at", "why_it_ended", "held_revocations_link", "progress_chart")
    actions = ["release_held", "discard_held"]

    def get_queryset(self, request):
        pending = Q(held_revocations__resolution=HeldRevocation.Resolution.PENDING)
        return (
            super()
            .get_queryset(request)
            .annotate(pending_held_count=Count("held_revocations", filter=pending))
        )

    def _held(self, queryset: QuerySet) -> QuerySet:
        return held_revocations_of_runs(queryset)

    @admin.display(description="scope", ordering="scope")
    def scope_shown(self, run: SyncRun) -> str:
        return run.maildomain_name if run.scope == SyncRun.Scope.DOMAIN else run.get_scope_display()

    @admin.display(description="status", ordering="status")
    def status_shown(self, run: SyncRun) -> str:
        status = run.get_status_display()
        return f"{status} ({run.error_code})" if run.error_code else status

    # Users not run show in the progress column, beside those asked.
    @admin.display(description="changed / failed / skipped")
    def counters(self, run: SyncRun) -> str:
        return f"{run.users_changed} / {run.users_failed} / {run.users_skipped}"

    @admin.display(description="progress")
    def progress(self, run: SyncRun) -> str:
        """Users counted over users enqueued (the total is known once the fan-out ends); for
        a run that stopped, how many were asked and how many were not run."""
        counted_users = run.users_done + run.users_failed + run.users_skipped + run.users_not_run
        if not run.users_enqueued:
            return f"{counted_users}/?" if run.status == SyncRun.Status.RUNNING else "-"
        if run.users_not_run:
            asked = run.users_done + run.users_failed
            return f"{asked}/{run.users_enqueued} asked, {run.users_not_run} not run"
        percent = 100 * counted_users // run.users_enqueued
        return f"{counted_users}/{run.users_enqueued} ({percent} %)"

    @admin.display(description="why it ended")
    def why_it_ended(self, run: SyncRun) -> str:
        return run.why_it_ended() or "-"

    @admin.display(description="revocation budget")
    def revocations(self, run: SyncRun) -> str:
        """What the run revoked against what it might, out of what the sync could revoke."""
        held = ", the rest held" if run.budget_reached else ""
        return (
            f"revoked {run.accesses_revoked} of budget {run.revoke_budget} "
            f"({run.revocable_accesses} revocable){held}"
        )

    @admin.display(description="pending held", ordering="pending_held_count")
    def pending_held(self, run: SyncRun) -> int:
        return run.pending_held_count  # type: ignore[attr-defined]  # get_queryset's annotation

    @admin.display(description="run at a glance")
    def progress_chart(self, run: SyncRun) -> str:
        return run_chart(run)

    @admin.display(description="held revocations")
    def held_revocations_link(self, run: SyncRun) -> str:
        url = reverse("admin:core_heldrevocation_changelist") + f"?run__id__exact={run.pk}"
        return format_html(
            '<a href="{}">{}, {} pending</a>',
            url,
            counted(run.held_revocations.count(), "held revocation", "held revocations"),
            count_pending(run.held_revocations.all()),
        )

    def get_urls(self):
        return [
            path(
                "resync-all/",
                self.admin_site.admin_view(self.resync_all_view),
                name="core_syncrun_resync_all",
            ),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_request_resync": self.has_request_resync_permission(request),
            # The breaker and rate limit toward the upstream, at the top of the runs they pace.
            "upstream_status": upstream_status(),
        }
        return super().changelist_view(request, extra_context=extra_context)

    @method_decorator(require_http_methods(["GET", "POST"]))
    def resync_all_view(self, request):
        """GET: a confirmation form. POST: start entitlements.sync_all_admins, show its id."""
        if not self.has_request_resync_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            [notice] = describe(request_resync(trigger=Trigger.ADMIN))
            self.message_user(request, notice.text, DEFAULT_LEVELS[notice.level.upper()])
            return redirect("admin:core_syncrun_changelist")
        return TemplateResponse(
            request,
            "admin/core/syncrun/resync_all.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "Resync all admins",
                "running": running_full_run(),
            },
        )
