"""The reconcile service: make a user's ADMIN accesses match a classified answer, atomically."""

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.cache import CacheStatus
from core.entitlements.selectors import states_entitled_to_any
from core.models import AccessAuditEntry, EntitlementSyncState, MailDomain, MailDomainAccess

Status = EntitlementSyncState.Status

# Domains granted per transaction by the provisioning grant (SQLite's OR-depth limit).
_GRANT_CHUNK = 200

STATUS_BY_KIND = {
    AnswerKind.AUTHORITATIVE: Status.OK,
    AnswerKind.NO_INFORMATION: Status.NO_INFORMATION,
    AnswerKind.INVALID: Status.INVALID,
    AnswerKind.BAD_REQUEST: Status.ERROR,
    AnswerKind.CONFIGURATION: Status.ERROR,
    AnswerKind.UNAVAILABLE: Status.UNAVAILABLE,
}


@dataclass(slots=True)
class SyncResult:
    """What one sync did, small and JSON-able (no email, no claim value)."""

    user_id: str
    trigger: str
    status: str
    error_code: str = ""
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    cache: CacheStatus = "miss"
    held: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when an access was granted or revoked."""
        return bool(self.added or self.removed)

    def as_dict(self) -> dict[str, Any]:
        """The result as a task returns it."""
        return {**asdict(self), "changed": self.changed}


@dataclass(slots=True)
class _Plan:
    """Accesses to create and to delete, by domain; computed from two reads."""

    to_add: dict[str, Any] = field(default_factory=dict)  # domain name -> domain id
    to_remove: dict[str, Any] = field(default_factory=dict)  # domain name -> access id
    unchanged: int = 0
    held: dict[str, Any] = field(default_factory=dict)  # revocations the guard held back


class RevocationGuard(Protocol):
    """Decides inside a reconcile's transaction whether its revocations may happen now.

    Returns False to hold them: the accesses stay, and the guard records why.
    """

    def __call__(self, *, user, maildomain_names: list[str]) -> bool: ...


def reconcile_admin_accesses(
    *,
    user,
    answer: UpstreamAnswer,
    trigger: str,
    task_id: str = "",
    dry_run: bool = False,
    cache: CacheStatus = "miss",
    revocation_guard: RevocationGuard | None = None,
) -> SyncResult:
    """Grant and revoke the user's ADMIN accesses to match an authoritative answer.

    Runs in one transaction with the user's sync state row locked, so two syncs of one user
    queue behind each other. A non-authoritative answer changes no access and only records
    why. The query count does not depend on the number of domains. `dry_run` plans only.
    A `revocation_guard` (a resync run's budget) is asked only when the plan revokes; the
    revocations it holds stay, and the result lists them as `held`.
    """
    if dry_run:
        plan = _plan(user=user, answer=answer) if answer.is_authoritative else _Plan()
        return _result(user=user, answer=answer, trigger=trigger, plan=plan, cache=cache)
    with transaction.atomic():
        state = _locked_state(user)
        plan = _plan(user=user, answer=answer) if answer.is_authoritative else _Plan()
        if (
            plan.to_remove
            and revocation_guard is not None
            and not revocation_guard(user=user, maildomain_names=sorted(plan.to_remove))
        ):
            plan.held, plan.to_remove = plan.to_remove, {}
        _apply(user=user, plan=plan, trigger=trigger, task_id=task_id)
        _record(state=state, answer=answer, trigger=trigger, task_id=task_id, cache=cache)
    return _result(user=user, answer=answer, trigger=trigger, plan=plan, cache=cache)


def _locked_state(user) -> EntitlementSyncState:
    """The user's sync state row, created if missing, locked until the transaction ends."""
    state = EntitlementSyncState.objects.select_for_update().filter(user=user).first()
    if state is None:
        # ON CONFLICT DO NOTHING: a concurrent first sync of the same user waits on our row
        # instead of failing with an IntegrityError.
        EntitlementSyncState.objects.bulk_create(
            [EntitlementSyncState(user=user)], ignore_conflicts=True
        )
        state = EntitlementSyncState.objects.select_for_update().get(user=user)
    return state


def _plan(*, user, answer: UpstreamAnswer) -> _Plan:
    """Diff the user's access rows against the entitled domains that exist here."""
    entitled = set(answer.domains)
    strict = settings.ENTITLEMENTS_STRICT_MODE
    plan = _Plan()
    has_row = set()
    for access_id, name, role, source in MailDomainAccess.objects.filter(user=user).values_list(
        "id", "maildomain__name", "role", "source"
    ):
        has_row.add(name)
        if name in entitled:
            plan.unchanged += 1
        elif role == MailDomainAccess.Role.ADMIN and (
            strict or source == MailDomainAccess.Source.ENTITLEMENTS
        ):
            plan.to_remove[name] = access_id
    missing = entitled - has_row
    if missing:
        # Names not found are domains not provisioned yet: remembered in the state, not created.
        plan.to_add = dict(MailDomain.objects.filter(name__in=missing).values_list("name", "id"))
    return plan


def _apply(*, user, plan: _Plan, trigger: str, task_id: str) -> None:
    """Write the plan: one insert, one delete and one audit insert at most."""
    if plan.to_add:
        # ignore_conflicts: a row made by hand at this very moment wins, the sync never fails.
        MailDomainAccess.objects.bulk_create(
            [
                MailDomainAccess(
                    user=user,
                    maildomain_id=domain_id,
                    role=MailDomainAccess.Role.ADMIN,
                    source=MailDomainAccess.Source.ENTITLEMENTS,
                )
                for domain_id in plan.to_add.values()
            ],
            ignore_conflicts=True,
        )
    if plan.to_remove:
        MailDomainAccess.objects.filter(id__in=plan.to_remove.values()).delete()
    entries = [
        AccessAuditEntry(
            user=user,
            maildomain_name=name,
            action=action,
            trigger=trigger,
            task_id=task_id,
        )
        for action, names in (
            (AccessAuditEntry.Action.GRANTED, plan.to_add),
            (AccessAuditEntry.Action.REVOKED, plan.to_remove),
        )
        for name in sorted(names)
    ]
    if entries:
        AccessAuditEntry.objects.bulk_create(entries)


def _record(
    *,
    state: EntitlementSyncState,
    answer: UpstreamAnswer,
    trigger: str,
    task_id: str,
    cache: CacheStatus,
) -> None:
    """Update the bookkeeping; the domain list only changes on an authoritative answer."""
    state.status = STATUS_BY_KIND[answer.kind]
    state.error_code = _error_code(answer, cache)
    state.finished_at = timezone.now()
    state.last_trigger = trigger
    state.last_task_id = task_id
    fields = ["status", "error_code", "finished_at", "last_trigger", "last_task_id"]
    if answer.is_authoritative:
        state.entitled_domains = list(answer.domains)
        state.answer_fingerprint = answer.fingerprint
        fields += ["entitled_domains", "answer_fingerprint"]
    state.save(update_fields=fields)


def _result(
    *, user, answer: UpstreamAnswer, trigger: str, plan: _Plan, cache: CacheStatus
) -> SyncResult:
    """The SyncResult of a reconcile."""
    return SyncResult(
        user_id=str(user.pk),
        trigger=trigger,
        status=str(STATUS_BY_KIND[answer.kind]),
        error_code=_error_code(answer, cache),
        added=sorted(plan.to_add),
        removed=sorted(plan.to_remove),
        unchanged=plan.unchanged,
        cache=cache,
        held=sorted(plan.held),
    )


def _error_code(answer: UpstreamAnswer, cache: CacheStatus) -> str:
    """Why the answer is not authoritative, or "stale" when a stale answer stood in."""
    return answer.error_code or ("stale" if cache == "stale" else "")


def grant_accesses_for_new_domains(
    *, maildomains: Iterable[MailDomain], trigger: str = "provisioning"
) -> int:
    """Grant ADMIN access on new domains to users whose last answer named them; return count.

    A provisioned domain gets its admins at once instead of at their next sync.
    """
    domains = {domain.name: domain for domain in maildomains}
    names = sorted(domains)
    granted = 0
    for start in range(0, len(names), _GRANT_CHUNK):
        chunk = names[start : start + _GRANT_CHUNK]
        with transaction.atomic():
            granted += _grant_chunk({name: domains[name] for name in chunk}, trigger=trigger)
    return granted


def _grant_chunk(domains: dict[str, MailDomain], *, trigger: str) -> int:
    """Grant one chunk of domains; states are locked so no sync of these users runs meanwhile."""
    # Locked in user order, so two grants over overlapping users cannot deadlock.
    entitled = states_entitled_to_any(domains).select_for_update().order_by("user_id")
    pairs = {
        (user_id, name)
        for user_id, names in entitled.values_list("user_id", "entitled_domains")
        for name in domains.keys() & set(names)
    }
    if not pairs:
        return 0
    existing = set(
        MailDomainAccess.objects.filter(
            user_id__in={user_id for user_id, _ in pairs}, maildomain__in=domains.values()
        ).values_list("user_id", "maildomain__name")
    )
    new = sorted(pairs - existing)
    MailDomainAccess.objects.bulk_create(
        [
            MailDomainAccess(
                user_id=user_id,
                maildomain=domains[name],
                role=MailDomainAccess.Role.ADMIN,
                source=MailDomainAccess.Source.ENTITLEMENTS,
            )
            for user_id, name in new
        ],
        ignore_conflicts=True,
    )
    AccessAuditEntry.objects.bulk_create(
        [
            AccessAuditEntry(
                user_id=user_id,
                maildomain_name=name,
                action=AccessAuditEntry.Action.GRANTED,
                trigger=trigger,
            )
            for user_id, name in new
        ]
    )
    return len(new)
