"""Read-only queries of the domain: for the API, the admin, the sync and its requests."""

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connections, router
from django.db.models import Exists, OuterRef, Q, QuerySet, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django_celery_beat.models import PeriodicTask

from core.models import (
    FAILED_SYNC_STATUSES,
    AccessAuditEntry,
    EntitlementSyncState,
    HeldRevocation,
    MailDomain,
    MailDomainAccess,
    SyncRun,
    User,
)
from core.task_names import TaskName
from core.validators import normalize_email


@dataclass(frozen=True)
class SyncSummary:
    """What a front end shows about a user's entitlements sync."""

    status: str
    requested_at: datetime | None
    finished_at: datetime | None


def get_sync_summary(*, user: User) -> SyncSummary:
    """Return the user's sync status and times; status "never" when no sync was ever asked."""
    row = (
        EntitlementSyncState.objects.filter(user=user)
        .values("status", "requested_at", "finished_at")
        .first()
    )
    if row is None:
        return SyncSummary(
            status=EntitlementSyncState.Status.NEVER, requested_at=None, finished_at=None
        )
    return SyncSummary(**row)


def maildomains_administered_by(*, user: User) -> QuerySet[MailDomain]:
    """Mail domains on which the user holds the ADMIN role, by name."""
    return MailDomain.objects.filter(
        accesses__user=user, accesses__role=MailDomainAccess.Role.ADMIN
    ).order_by("name")


def get_administered_maildomain(*, user: User, maildomain_id: uuid.UUID) -> MailDomain | None:
    """The mail domain with this id if the user administers it, else None."""
    return maildomains_administered_by(user=user).filter(id=maildomain_id).first()


def maildomain_accesses(*, maildomain: MailDomain) -> QuerySet[MailDomainAccess]:
    """Accesses of one mail domain with their users, by user email."""
    return (
        MailDomainAccess.objects.filter(maildomain=maildomain)
        .select_related("user")
        .order_by("user__email")
    )


def find_user(*, user_id: uuid.UUID | None = None, email: str | None = None) -> User | None:
    """The user with this id, or with this email (domain part compared lower-case)."""
    if user_id is not None:
        return User.objects.filter(id=user_id).first()
    if email:
        return User.objects.filter(email=normalize_email(email)).first()
    return None


def find_user_id(*, email: str) -> uuid.UUID | None:
    """The id of the user with this email (normalised as find_user does), or None: one
    indexed lookup that reads no other column (a change signal's)."""
    return User.objects.filter(email=normalize_email(email)).values_list("pk", flat=True).first()


# --- The sync's bookkeeping ------------------------------------------------------------------


def users_entitled_to(name: str) -> QuerySet:
    """Ids of the users whose last authoritative answer named the domain `name`."""
    return states_entitled_to_any([name]).values_list("user_id", flat=True)


def states_entitled_to_any(names: Iterable[str]) -> QuerySet:
    """Sync states whose last authoritative answer named at least one of `names`."""
    names = sorted(set(names))
    states = EntitlementSyncState.objects.all()
    if connections[router.db_for_read(EntitlementSyncState)].vendor == "postgresql":
        # jsonb ?| matches string elements of a top-level array.
        return states.filter(entitled_domains__has_any_keys=names)
    # SQLite has no JSON containment lookup: match the quoted name in the stored JSON text.
    # Exact, because domain names hold no character that JSON escapes. Callers pass at most
    # a few hundred names (SQLite caps the depth of an OR chain at 1000).
    condition = Q()
    for name in names:
        condition |= Q(entitled_domains_text__contains=f'"{name}"')
    return states.alias(entitled_domains_text=Cast("entitled_domains", TextField())).filter(
        condition
    )


def outstanding_requests(*, now: datetime, grace: timedelta) -> QuerySet:
    """(user id, trigger) of requests no sync has served and no recent task carries."""
    stuck_before = now - grace
    states = EntitlementSyncState.objects
    # The sync that took the request died without finishing.
    died = states.running().filter(requested_at__isnull=False, started_at__lt=stuck_before)
    return (
        (states.unserved() | died)
        .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=stuck_before))
        .order_by()
        .values_list("user_id", "last_trigger")
    )


def users_due_for_full_resync() -> QuerySet:
    """Ids of users the periodic resync covers.

    Those who hold a sync-created access (a revocation upstream must land), whose last
    answer named domains (some may have been provisioned since), whose last sync failed
    (invalid, error, unavailable) and those never synced. Left out: users who never had an
    entitlement and whose last sync was told so (ok with no domain, no information), whose
    access ended and who have no sync-made access left, or who could not be asked (skipped:
    e.g. a local operator without the forwarded claim); their next login asks again.
    """
    holds_synced_access = MailDomainAccess.objects.filter(
        user=OuterRef("pk"), source=MailDomainAccess.Source.ENTITLEMENTS
    )
    state = EntitlementSyncState.objects.filter(user=OuterRef("pk"))
    settled = Q(status__in=_SETTLED_WITHOUT_ENTITLEMENT, entitled_domains=[])
    return (
        User.objects.filter(
            Exists(holds_synced_access) | ~Exists(state) | Exists(state.exclude(settled))
        )
        .order_by()
        .values_list("pk", flat=True)
    )


# Statuses after which a user with no entitled domain needs no periodic asking. An ended
# access is one of them once no sync-made access is left to revoke: asking again changes
# nothing until a login (or a resync a person starts) finds the subscription renewed.
_SETTLED_WITHOUT_ENTITLEMENT = (
    EntitlementSyncState.Status.OK,
    EntitlementSyncState.Status.NO_INFORMATION,
    EntitlementSyncState.Status.SKIPPED,
    EntitlementSyncState.Status.ACCESS_ENDED,
)


def users_of_domain(*, maildomain: MailDomain) -> QuerySet:
    """Ids of users a resync of one domain covers: its admins and those last told they may be."""
    return (
        User.objects.filter(
            Q(pk__in=MailDomainAccess.objects.filter(maildomain=maildomain).values("user_id"))
            | Q(pk__in=users_entitled_to(maildomain.name))
        )
        .order_by()
        .values_list("pk", flat=True)
    )


def users_of_organisation(*, siret: str) -> QuerySet:
    """Ids of the users whose stored siret claim is `siret` (an organisation's resync)."""
    return (
        EntitlementSyncState.objects.alias(
            siret_claim=KeyTextTransform("siret", "forwarded_claims")
        )
        .filter(siret_claim=siret)
        .order_by()
        .values_list("user_id", flat=True)
    )


def organisation_siret_of(*, user_id) -> str:
    """The user's stored siret claim ("" when none): the organisation a signal's run covers."""
    claims = (
        EntitlementSyncState.objects.filter(user_id=user_id)
        .values_list("forwarded_claims", flat=True)
        .first()
    )
    siret = (claims or {}).get("siret") if isinstance(claims, dict) else None
    return siret if isinstance(siret, str) else ""


def running_sync_serves_request(*, user_id) -> bool:
    """Whether a sync of the user is running that started after their latest request.

    Such a sync reads the upstream after the request was made, so it honours it: a second
    task for the same request can stop. A sync that started before the request cannot.
    """
    state = (
        EntitlementSyncState.objects.filter(user_id=user_id)
        .only("requested_at", "started_at", "finished_at")
        .first()
    )
    return bool(state and state.is_running() and state.is_served())


def pending_held_revocations(*, user: User | None = None) -> QuerySet:
    """Held revocations no operator has released or discarded yet (of one user, if given)."""
    pending = HeldRevocation.objects.filter(resolution=HeldRevocation.Resolution.PENDING)
    return pending if user is None else pending.filter(user=user)


def count_pending(held: QuerySet) -> int:
    """How many of these held revocations are still pending."""
    return held.filter(resolution=HeldRevocation.Resolution.PENDING).count()


def held_revocations_of_runs(runs: QuerySet) -> QuerySet:
    """Every held revocation of these runs, whatever its resolution."""
    return HeldRevocation.objects.filter(run__in=runs.values("pk"))


# --- What the admin shows --------------------------------------------------------------------


def get_sync_state(*, user: User) -> EntitlementSyncState | None:
    """The user's sync state row, None before their first sync request."""
    return EntitlementSyncState.objects.filter(user=user).first()


def audit_entries_of(*, user: User) -> QuerySet[AccessAuditEntry]:
    """The access changes the sync made for the user, newest first."""
    return AccessAuditEntry.objects.filter(user=user)


def running_full_run() -> SyncRun | None:
    """The run over all admins that is in progress, if any."""
    return SyncRun.objects.filter(scope=SyncRun.Scope.ALL, status=SyncRun.Status.RUNNING).first()


def error_codes_in_use(*, model: type[EntitlementSyncState] | type[SyncRun]) -> list[str]:
    """The non-empty error codes the sync states (or runs) hold, sorted."""
    return list(
        model.objects.exclude(error_code="")
        .order_by("error_code")
        .values_list("error_code", flat=True)
        .distinct()
    )


def latest_run() -> SyncRun | None:
    """The run that started last, whatever its scope and status."""
    return SyncRun.objects.order_by("-started_at").first()


def runs_skipped_since(*, since: datetime) -> QuerySet[SyncRun]:
    """Runs recorded skipped (one of their scope was still running) that started after `since`."""
    return SyncRun.objects.filter(status=SyncRun.Status.SKIPPED, started_at__gte=since)


def full_resync_schedule() -> PeriodicTask | None:
    """The periodic task of the full resync (beat's schedule), if it is enabled."""
    return (
        PeriodicTask.objects.filter(task=TaskName.SYNC_ALL_ADMINS, enabled=True)
        .select_related("interval")
        .first()
    )


def waiting_sync_requests() -> QuerySet[EntitlementSyncState]:
    """Sync states whose latest request no sync has started serving yet."""
    return EntitlementSyncState.objects.unserved()


def failed_syncs_since(*, since: datetime) -> QuerySet[EntitlementSyncState]:
    """Sync states whose last sync failed (invalid, error, unavailable) and ended after `since`."""
    return EntitlementSyncState.objects.filter(
        status__in=FAILED_SYNC_STATUSES, finished_at__gte=since
    )


# Below this many rows an exact count is cheap, and the planner's estimate may be stale.
_ESTIMATED_FROM_ROWS = 100_000


def estimated_row_count(model) -> int | None:
    """The planner's estimate of the model's table rows (PostgreSQL's pg_class.reltuples),
    None when an exact count is cheap (small or never analysed tables) or not PostgreSQL."""
    connection = connections[router.db_for_read(model)]
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", [model._meta.db_table]
        )
        row = cursor.fetchone()
    if row is None or row[0] < _ESTIMATED_FROM_ROWS:
        return None
    return int(row[0])


# --- How fresh the admins' rights are --------------------------------------------------------


@dataclass(frozen=True)
class Freshness:
    """How long ago the admins' rights were last confirmed by an authoritative answer.

    Ages in seconds, None when no admin was ever confirmed; admins never confirmed count as
    older than any interval.
    """

    admins: int
    never_confirmed: int
    p50_age: float | None
    p99_age: float | None
    max_age: float | None
    older_than_one_interval: int
    older_than_two_intervals: int


def admin_states() -> QuerySet[EntitlementSyncState]:
    """Sync states of the admins the sync answers for: their last authoritative answer named
    a domain (kept while later answers fail, so a failing admin stays and ages)."""
    return EntitlementSyncState.objects.exclude(entitled_domains=[])


def admins_unconfirmed_since(*, since: datetime) -> QuerySet[EntitlementSyncState]:
    """Admins' sync states whose rights no authoritative answer confirmed since `since`."""
    return admin_states().filter(
        Q(rights_confirmed_at__isnull=True) | Q(rights_confirmed_at__lt=since)
    )


def admin_freshness(*, now: datetime, interval: timedelta) -> Freshness:
    """The admins' confirmation ages, read from their partial index on rights_confirmed_at:
    counts of index ranges and nearest ranks by offset, no sort and no join (an aggregate with
    percentile_cont scanned and sorted every admin: ~1 s at a million, docs/performance.md)."""
    states = admin_states()
    never = states.filter(rights_confirmed_at__isnull=True).count()

    def older_than(intervals: int) -> int:
        return never + states.filter(rights_confirmed_at__lt=now - intervals * interval).count()

    # The p99 age is the confirmation time at the 1st percentile (older is earlier); the
    # oldest is the first.
    ranks = _nearest_ranks(states, field="rights_confirmed_at", fractions=(0.5, 0.01, 0.0))
    p50, p99, oldest = (None if value is None else now.timestamp() - value for value in ranks)
    return Freshness(
        admins=states.count(),
        never_confirmed=never,
        p50_age=p50,
        p99_age=p99,
        max_age=oldest,
        older_than_one_interval=older_than(1),
        older_than_two_intervals=older_than(2),
    )


def _nearest_ranks(states: QuerySet, *, field: str, fractions: Iterable[float]) -> list:
    """The confirmation times (Unix seconds) at these fractions, by nearest rank: one count and
    one offset read on the index per fraction."""
    confirmed = states.filter(**{f"{field}__isnull": False}).order_by(field)
    total = confirmed.count()
    if not total:
        return [None for _ in fractions]
    times = confirmed.values_list(field, flat=True)
    return [times[round(fraction * (total - 1))].timestamp() for fraction in fractions]
