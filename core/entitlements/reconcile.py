"""The reconcile service: make a user's ADMIN accesses match a classified answer, atomically."""

from collections import defaultdict
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core.chunks import chunked
from core.entitlements.access_ended import confirmed_ended
from core.entitlements.accesses import Grant, Revocation, change_accesses
from core.entitlements.backends.base import AnswerKind, UpstreamAnswer
from core.entitlements.identity import (
    IDENTITY_CHANGED,
    hold_identity_revocations,
    hold_revocations_after_identity_change,
    upstream_identity,
)
from core.entitlements.results import SYNC_STATUS_BY_ANSWER_KIND, SyncResult
from core.models import (
    EntitlementSyncState,
    HeldRevocation,
    MailDomain,
    MailDomainAccess,
    Trigger,
    User,
)
from core.sql_rows import insert_rows, update_rows

Status = EntitlementSyncState.Status

# Domain names looked up per query: far below SQLite's limit on bound parameters.
_NAMES_PER_QUERY = 500


@dataclass(slots=True)
class _Plan:
    """Accesses to create and to delete, by domain; computed from two reads."""

    to_add: dict[str, Any] = field(default_factory=dict)  # domain name -> domain id
    to_remove: dict[str, Any] = field(default_factory=dict)  # domain name -> access id
    unchanged: int = 0
    held: dict[str, Any] = field(default_factory=dict)  # revocations the budget held back
    revocable: int = 0  # the user's accesses the sync may revoke
    identity_held: bool = False  # held for an operator: the e-mail sent upstream changed


# One user and their classified answer, ready to reconcile.
UserAnswer = tuple[User, UpstreamAnswer]


class RecordedState(NamedTuple):
    """What a reconcile reads of a user's sync state row (the rules' inputs), nothing more."""

    upstream_identity: str = ""
    access_ended_since: datetime | None = None


_RECORDED_STATE_FIELDS = ("user_id", *RecordedState._fields)


class RevocationBudget(Protocol):
    """Decides inside a reconcile's transaction whether its revocations may happen now.

    A run's budget (revocation_budget.RunRevocationBudget) is the one implementation: it
    holds the revocations past the run's share, recording them for an operator.
    """

    # The run whose budget it is: its syncs report what fails for all of them once per run.
    run_id: int

    def admit_batch(self, *, count: int) -> bool:
        """Reserve `count` revocations at once; False changes nothing (then ask one by one)."""

    def __call__(self, *, user, maildomain_names: list[str]) -> bool:
        """True: revoke these now. False: they are held (and recorded)."""


def reconcile_admin_accesses(
    *,
    user,
    answer: UpstreamAnswer,
    trigger: Trigger,
    task_id: str = "",
    revocation_budget: RevocationBudget | None = None,
) -> SyncResult:
    """Grant and revoke the user's ADMIN accesses to match an authoritative answer.

    Runs in one transaction with the user's sync state row locked, so two syncs of one user
    queue behind each other. A non-authoritative answer changes no access and only records
    why. The query count does not depend on the number of domains.
    A `revocation_budget` (a resync run's) is asked only when the plan revokes; the
    revocations it holds stay, and the result lists them as `held`. An answer removing every
    revocable access right after the e-mail sent upstream changed is held for an operator
    (identity.py); an ended access (ACCESS_ENDED) is revoked only by a run, through its
    budget, once it has lasted ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS.
    """
    [result] = reconcile_many_admin_accesses(
        answers=[(user, answer)],
        trigger=trigger,
        task_id=task_id,
        revocation_budget=revocation_budget,
    )
    return result


def reconcile_many_admin_accesses(
    *,
    answers: Sequence[UserAnswer],
    trigger: Trigger,
    task_id: str = "",
    revocation_budget: RevocationBudget | None = None,
) -> list[SyncResult]:
    """reconcile_admin_accesses for many users at once, in one transaction; results in order.

    The query count depends neither on the number of users nor on the number of domains: a
    full resync reconciles a whole batch of users in a handful of statements and one commit
    (plus what the `revocation_budget` queries, for users who lose an access). Each user's
    state row is locked (in user order, so two overlapping calls cannot deadlock) before
    their accesses are read.
    """
    if len({user.pk for user, _answer in answers}) != len(answers):
        raise ValueError("each user may appear once in a reconcile")
    users = [user for user, _answer in answers]
    with transaction.atomic():
        states = _locked_states(users)
        plans = _checked_plans(answers, states, in_run=revocation_budget is not None)
        for (user, _answer), plan in zip(answers, plans, strict=True):
            if plan.identity_held:
                hold_identity_revocations(user=user, maildomain_names=plan.held)
        if revocation_budget is not None:
            _hold_refused_revocations(answers=answers, plans=plans, budget=revocation_budget)
        _apply(plans=plans, answers=answers, trigger=trigger, task_id=task_id)
        _record(states=states, answers=answers, plans=plans, trigger=trigger, task_id=task_id)
    return _results(answers, plans, trigger=trigger)


def plan_admin_accesses(
    *, answers: Sequence[UserAnswer], trigger: Trigger, in_run: bool = False
) -> list[SyncResult]:
    """What reconcile_many_admin_accesses would do (in a run, without its budget: `in_run`),
    read without writing."""
    plans = _checked_plans(answers, _read_states([user for user, _ in answers]), in_run=in_run)
    return _results(answers, plans, trigger=trigger)


def _results(
    answers: Sequence[UserAnswer], plans: Sequence["_Plan"], *, trigger: Trigger
) -> list[SyncResult]:
    return [
        _result(answer=answer, trigger=trigger, plan=plan)
        for answer, plan in zip(answers, plans, strict=True)
    ]


def _checked_plans(
    answers: Sequence[UserAnswer], states: dict[Any, RecordedState], *, in_run: bool
) -> list["_Plan"]:
    """The plans, with the ended-access and identity rules applied."""
    plans = _plans(answers, ended=confirmed_ended(answers=answers, states=states, in_run=in_run))
    hold_revocations_after_identity_change(answers=answers, plans=plans, states=states)
    return plans


def _hold_refused_revocations(
    *, answers: Sequence[UserAnswer], plans: Sequence[_Plan], budget: RevocationBudget
) -> None:
    """Ask the budget about each user's revocations, in order; hold those it refuses.

    It is first asked for all of them at once: one statement instead of one per user in the
    usual case, the budget not reached.
    """
    total = sum(len(plan.to_remove) for plan in plans)
    if not total or budget.admit_batch(count=total):
        return
    for (user, _answer), plan in zip(answers, plans, strict=True):
        if plan.to_remove and not budget(user=user, maildomain_names=sorted(plan.to_remove)):
            plan.held, plan.to_remove = plan.to_remove, {}


def _locked_states(users: Sequence) -> dict[Any, RecordedState]:
    """The users' sync states by user id, their rows created if missing, locked until commit."""
    user_ids = sorted(user.pk for user in users)
    locked = EntitlementSyncState.objects.select_for_update().order_by("user_id")
    states = _recorded_states(locked.filter(user_id__in=user_ids))
    missing = [user_id for user_id in user_ids if user_id not in states]
    if missing:
        # ON CONFLICT DO NOTHING: a concurrent first sync of the same user waits on our row
        # instead of failing with an IntegrityError.
        insert_rows(
            EntitlementSyncState,
            [{"user_id": user_id} for user_id in missing],
            ignore_conflicts=True,
        )
        states.update(_recorded_states(locked.filter(user_id__in=missing)))
    return states


def _read_states(users: Sequence) -> dict[Any, RecordedState]:
    """The users' sync states by user id, unlocked; a blank one for a user without a row."""
    found = _recorded_states(
        EntitlementSyncState.objects.filter(user_id__in=[user.pk for user in users])
    )
    return {user.pk: found.get(user.pk, RecordedState()) for user in users}


def _recorded_states(rows) -> dict[Any, RecordedState]:
    """The states of a query of sync state rows, by user id."""
    return {
        user_id: RecordedState(*state)
        for user_id, *state in rows.values_list(*_RECORDED_STATE_FIELDS)
    }


def _plans(answers: Sequence[UserAnswer], *, ended: Set[Any] = frozenset()) -> list[_Plan]:
    """Diff each user's access rows against the entitled domains that exist here.

    Users in `ended` (their access ended upstream, confirmed) are entitled to nothing.
    """
    strict = settings.ENTITLEMENTS_STRICT_MODE
    planned = [user.pk for user, answer in answers if answer.is_authoritative or user.pk in ended]
    rows: dict[Any, list] = defaultdict(list)
    if planned:
        for user_id, *row in MailDomainAccess.objects.filter(user_id__in=planned).values_list(
            "user_id", "id", "maildomain__name", "role", "source"
        ):
            rows[user_id].append(row)
    plans = [_Plan() for _ in answers]
    missing: list[set[str]] = [set() for _ in answers]
    for (user, answer), plan, plan_missing in zip(answers, plans, missing, strict=True):
        if not (answer.is_authoritative or user.pk in ended):
            continue
        entitled = set(answer.domains)
        has_row = set()
        for access_id, name, role, source in rows[user.pk]:
            has_row.add(name)
            revocable = role == MailDomainAccess.Role.ADMIN and (
                strict or source == MailDomainAccess.Source.ENTITLEMENTS
            )
            plan.revocable += revocable
            if name in entitled:
                plan.unchanged += 1
            elif revocable:
                plan.to_remove[name] = access_id
        plan_missing.update(entitled - has_row)
    # Names not found are domains not provisioned yet: remembered in the state, not created.
    domain_ids = _domain_ids(set().union(*missing))
    for plan, plan_missing in zip(plans, missing, strict=True):
        plan.to_add = {
            name: domain_ids[name] for name in sorted(plan_missing) if name in domain_ids
        }
    return plans


def _domain_ids(names: set[str]) -> dict[str, Any]:
    """Ids of the existing domains among `names`; one query per chunk of names."""
    found: dict[str, Any] = {}
    for chunk in chunked(sorted(names), _NAMES_PER_QUERY):
        found.update(MailDomain.objects.filter(name__in=chunk).values_list("name", "id"))
    return found


def _apply(
    *, plans: Sequence[_Plan], answers: Sequence[UserAnswer], trigger: Trigger, task_id: str
) -> None:
    """Write the plans: one insert, one delete and one insert of their audit rows at most."""
    grants, revocations = [], []
    for (user, _answer), plan in zip(answers, plans, strict=True):
        grants += [Grant(user.pk, id_, name) for name, id_ in sorted(plan.to_add.items())]
        revocations += [
            Revocation(user.pk, id_, name) for name, id_ in sorted(plan.to_remove.items())
        ]
    change_accesses(grants=grants, revocations=revocations, trigger=trigger, task_id=task_id)


def _record(
    *,
    states: dict[Any, RecordedState],
    answers: Sequence[UserAnswer],
    plans: Sequence[_Plan],
    trigger: str,
    task_id: str,
) -> None:
    """Update the bookkeeping; the domain list changes on an authoritative answer only, or
    empties at once when the access ended (so provisioning grants nothing from it).

    One UPDATE for the users whose rows change the same fields: usually the whole batch.
    """
    now = timezone.now()
    rows = []
    for (user, answer), plan in zip(answers, plans, strict=True):
        status, error_code = _status(answer, plan)
        row = {
            "user_id": user.pk,
            "status": status,
            "error_code": error_code,
            "finished_at": now,
            "last_trigger": trigger,
            "last_task_id": task_id,
        }
        if answer.is_authoritative:
            row |= {
                "entitled_domains": list(answer.domains),
                "answer_fingerprint": answer.fingerprint,
                "access_ended_since": None,
            }
            if not plan.identity_held:
                # Held: the old identity stays, so the next sync holds again until resolved;
                # the rights are not confirmed either until an operator resolves it.
                row |= {
                    "upstream_identity": upstream_identity(user.email),
                    "rights_confirmed_at": now,
                }
        elif answer.kind is AnswerKind.ACCESS_ENDED:
            row |= {
                "entitled_domains": [],
                "answer_fingerprint": "",
                "access_ended_since": states[user.pk].access_ended_since or now,
            }
        rows.append(row)
    update_rows(EntitlementSyncState, rows)


def _result(*, answer: UserAnswer, trigger: str, plan: _Plan) -> SyncResult:
    """The SyncResult of a reconcile."""
    user, upstream = answer
    status, error_code = _status(upstream, plan)
    return SyncResult(
        user_id=str(user.pk),
        trigger=trigger,
        status=str(status),
        error_code=error_code,
        added=sorted(plan.to_add),
        removed=sorted(plan.to_remove),
        unchanged=plan.unchanged,
        cache=upstream.cache,
        held=sorted(plan.held),
    )


def _status(answer: UpstreamAnswer, plan: _Plan) -> tuple[str, str]:
    """The sync state's status and error code after reconciling `answer` as `plan` says."""
    if plan.identity_held:
        return Status.REVOCATIONS_HELD, IDENTITY_CHANGED
    if plan.held:
        # The run's budget held them: the user's row says so, not only the held list.
        return Status.REVOCATIONS_HELD, HeldRevocation.Reason.RUN_BUDGET.value
    return SYNC_STATUS_BY_ANSWER_KIND[answer.kind], _error_code(answer)


def _error_code(answer: UpstreamAnswer) -> str:
    """Why the answer is not authoritative, or "stale" when a stale answer stood in."""
    return answer.error_code or ("stale" if answer.cache == "stale" else "")
