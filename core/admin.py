"""Django admin for operators: users and their rights, mail domains, the sync's records, and
the manual triggers (resync a user, a domain, everyone; release or discard held revocations)."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import forms as auth_forms
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_http_methods

from core.entitlements import (
    RequestOutcome,
    SyncNotEnqueuedError,
    discard_held_revocations,
    forwarded_claim_names,
    release_held_revocations,
    request_domain_resync,
    request_full_resync,
    request_sync,
    upstream_status,
)
from core.models import (
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomain,
    MailDomainAccess,
    SyncRun,
    Trigger,
    User,
)
from core.validators import normalize_domain_name, normalize_email

# A bigger selection is a job for a full resync, not for a web request sending one task each.
MAX_USERS_PER_RESYNC_ACTION = 100
# Task ids listed in a message; the rest are counted.
_MAX_IDS_SHOWN = 10
# Latest audit rows shown on a user's page (the full trail is one link away).
_AUDIT_ROWS_SHOWN = 10


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


def _task_ids(task_ids: list[str]) -> str:
    """Task ids for a message: all of a few, the first ones of many."""
    shown = ", ".join(task_ids[:_MAX_IDS_SHOWN])
    more = len(task_ids) - _MAX_IDS_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _claims_display(state: EntitlementSyncState | None, *, with_values: bool) -> str:
    """The forwarded claims stored at login (names, values only when asked), beside the names
    the configured backend forwards, so a missing one shows."""
    claims = state.forwarded_claims if state else {}
    if with_values:
        stored = ", ".join(f"{name}={value}" for name, value in sorted(claims.items()))
    else:
        stored = ", ".join(sorted(claims))
    forwarded = ", ".join(forwarded_claim_names()) or "none"
    return f"{stored or 'none'} (the backend forwards: {forwarded})"


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
class UserAdmin(ResyncPermissionMixin, auth_admin.UserAdmin):
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
                f"Select at most {MAX_USERS_PER_RESYNC_ACTION} users, or start a full resync "
                "(Sync runs, Resync all admins).",
                messages.ERROR,
            )
            return
        # Outside a transaction (the changelist runs in autocommit) each task is sent here and
        # now, so each outcome is final.
        requests = [request_sync(user=user, trigger=Trigger.ADMIN) for user in users]
        queued = [r.task_id for r in requests if r.outcome == RequestOutcome.QUEUED]
        collapsed = [r for r in requests if r.outcome == RequestOutcome.COLLAPSED]
        not_sent = [r for r in requests if r.outcome == RequestOutcome.NOT_SENT]
        if queued:
            self.message_user(
                request,
                f"Entitlements sync queued for {len(queued)} user(s): task(s) {_task_ids(queued)}.",
                messages.SUCCESS,
            )
        if collapsed:
            self.message_user(
                request,
                f"{len(collapsed)} user(s) already had a sync queued in the last "
                f"{settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS} s: it serves this request.",
                messages.INFO,
            )
        if not_sent:
            self.message_user(
                request,
                f"The task broker cannot be reached: the sync of {len(not_sent)} user(s) was "
                "not sent. The request is recorded; the sweep sends it once the broker is back.",
                messages.ERROR,
            )

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

    @admin.display(description="forwarded claims")
    def claim_names(self, user: User) -> str:
        """Names only: enough to see whether login stored what the backend needs."""
        state = EntitlementSyncState.objects.filter(user=user).first()
        return _claims_display(state, with_values=False)

    @admin.display(description="forwarded claims")
    def claim_values(self, user: User) -> str:
        """Names and values, for superusers."""
        state = EntitlementSyncState.objects.filter(user=user).first()
        return _claims_display(state, with_values=True)

    @admin.display(description="held revocations")
    def held_revocations(self, user: User) -> str:
        pending = HeldRevocation.objects.filter(
            user=user, resolution=HeldRevocation.Resolution.PENDING
        ).values_list("maildomain_name", flat=True)
        if not pending:
            return "-"
        url = reverse("admin:core_heldrevocation_changelist") + f"?user__id__exact={user.pk}"
        return format_html(
            '<a href="{}">{} pending</a>: {}', url, len(pending), ", ".join(sorted(pending))
        )

    @admin.display(description="audit trail")
    def audit_trail(self, user: User) -> str:
        entries = AccessAuditEntry.objects.filter(user=user)
        count = entries.count()
        url = reverse("admin:core_accessauditentry_changelist") + f"?user__id__exact={user.pk}"
        link = format_html('<a href="{}">{} access change(s) by the sync</a>', url, count)
        if not count:
            return link
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            entries.values_list("created_at", "action", "maildomain_name", "trigger", "task_id")[
                :_AUDIT_ROWS_SHOWN
            ],
        )
        return format_html(
            "{}<table><tr><th>when</th><th>action</th><th>domain</th><th>trigger</th>"
            "<th>task id</th></tr>{}</table>",
            link,
            rows,
        )


def _with_claim_values(fields: tuple) -> tuple:
    """A superuser's fields: the claim names replaced by the names with their values."""
    return tuple("claim_values" if field == "claim_names" else field for field in fields)


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
            try:
                task_id = request_domain_resync(maildomain=maildomain, trigger=Trigger.ADMIN)
            except SyncNotEnqueuedError:
                self.message_user(
                    request,
                    f"The task broker cannot be reached: the resync of {maildomain.name}'s "
                    "admins was not started. Try again later.",
                    messages.ERROR,
                )
                return
            self.message_user(
                request,
                f"Resync of {maildomain.name}'s admins started: task {task_id}.",
                messages.SUCCESS,
            )

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
    # Claim values (e.g. a siret) show to superusers only, as on the user's page.
    exclude = ("forwarded_claims",)

    def get_readonly_fields(self, request, obj=None):
        return ("claim_values",) if request.user.is_superuser else ("claim_names",)

    @admin.display(description="forwarded claims")
    def claim_names(self, state: EntitlementSyncState) -> str:
        return _claims_display(state, with_values=False)

    @admin.display(description="forwarded claims")
    def claim_values(self, state: EntitlementSyncState) -> str:
        return _claims_display(state, with_values=True)


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


class HeldRevocationActionsMixin(ReleasePermissionMixin):
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
                queryset,
                title="Release held revocations",
                summary=(
                    f"{_pending_count(held)} pending held revocation(s): {report.revoked} "
                    f"would be revoked, {report.kept} kept (the user's last answer names the "
                    f"domain again), {report.gone} are already gone."
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
                queryset,
                title="Discard held revocations",
                summary=(
                    f"{_pending_count(held)} pending held revocation(s) would be discarded: "
                    "the accesses stay."
                ),
                confirm_label="Yes, keep the accesses",
            )
        discarded = discard_held_revocations(held=held, operator=request.user)
        self.message_user(
            request, f"{discarded} held revocation(s) discarded; accesses kept.", messages.SUCCESS
        )
        return None

    def _confirm(self, request, queryset: QuerySet, *, title: str, summary: str, confirm_label):
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


def _pending_count(held: QuerySet) -> int:
    return held.filter(resolution=HeldRevocation.Resolution.PENDING).count()


@admin.register(SyncRun)
class SyncRunAdmin(
    ResyncPermissionMixin, HeldRevocationActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin
):
    """Admin-wide resyncs, their progress while they run, their history, and the button that
    starts a full resync."""

    change_list_template = "admin/core/syncrun/change_list.html"
    list_display = (
        "id",
        "started_at",
        "scope",
        "maildomain_name",
        "trigger",
        "status",
        "error_code",
        "progress",
        "users_enqueued",
        "users_done",
        "users_changed",
        "users_failed",
        "users_skipped",
        "revocations",
        "pending_held",
        "finished_at",
    )
    list_filter = ("status", "scope", "trigger", "revocations_held")
    search_fields = ("maildomain_name", "task_id")
    date_hierarchy = "started_at"
    readonly_fields = ("held_revocations_link",)
    actions = ["release_held", "discard_held"]

    def get_queryset(self, request):
        pending = Q(held_revocations__resolution=HeldRevocation.Resolution.PENDING)
        return (
            super()
            .get_queryset(request)
            .annotate(pending_held_count=Count("held_revocations", filter=pending))
        )

    def _held(self, queryset: QuerySet) -> QuerySet:
        return HeldRevocation.objects.filter(run__in=queryset.values("pk"))

    @admin.display(description="progress")
    def progress(self, run: SyncRun) -> str:
        """Users counted over users enqueued (the total is known once the fan-out ends)."""
        counted = run.users_done + run.users_failed + run.users_skipped
        if not run.users_enqueued:
            return f"{counted}/?" if run.status == SyncRun.Status.RUNNING else "-"
        return f"{counted}/{run.users_enqueued} ({100 * counted // run.users_enqueued} %)"

    @admin.display(description="revoked / budget")
    def revocations(self, run: SyncRun) -> str:
        held = ", held" if run.revocations_held else ""
        return f"{run.accesses_revoked}/{run.revoke_budget} of {run.revocable_accesses}{held}"

    @admin.display(description="pending held", ordering="pending_held_count")
    def pending_held(self, run: SyncRun) -> int:
        return run.pending_held_count

    @admin.display(description="held revocations")
    def held_revocations_link(self, run: SyncRun) -> str:
        url = reverse("admin:core_heldrevocation_changelist") + f"?run__id__exact={run.pk}"
        return format_html(
            '<a href="{}">{} held revocation(s), {} pending</a>',
            url,
            run.held_revocations.count(),
            _pending_count(run.held_revocations.all()),
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
            try:
                task_id = request_full_resync(trigger=Trigger.ADMIN)
            except SyncNotEnqueuedError:
                self.message_user(
                    request,
                    "The task broker cannot be reached: the full resync was not started. "
                    "Try again later.",
                    messages.ERROR,
                )
            else:
                self.message_user(
                    request,
                    f"Full resync started: task {task_id}. Its run shows here once a worker "
                    "takes it.",
                    messages.SUCCESS,
                )
            return redirect("admin:core_syncrun_changelist")
        return TemplateResponse(
            request,
            "admin/core/syncrun/resync_all.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "Resync all admins",
                "running": SyncRun.objects.filter(
                    scope=SyncRun.Scope.ALL, status=SyncRun.Status.RUNNING
                ).first(),
            },
        )


@admin.register(HeldRevocation)
class HeldRevocationAdmin(HeldRevocationActionsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Revocations a run held at its blast-radius budget; released or discarded by an operator."""

    list_display = (
        "created_at",
        "user",
        "maildomain_name",
        "run",
        "resolution",
        "resolved_at",
        "resolved_by",
    )
    # Filtered by run through the link on the run's page (a run filter would list every run).
    list_filter = ("resolution",)
    list_select_related = ("user", "run", "resolved_by")
    search_fields = ("user__email", "maildomain_name")
    date_hierarchy = "created_at"
    actions = ["release_held", "discard_held"]

    def _held(self, queryset: QuerySet) -> QuerySet:
        return queryset
