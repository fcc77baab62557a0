"""Every Prometheus metric of the service, and the one-line functions the code records them with.

Labels take values from short fixed sets (triggers, statuses, answer classes, queues); a value
outside its set is recorded as "other", so no e-mail, siret or domain name can ever become a
label. With PROMETHEUS_MULTIPROC_DIR set (in the environment, before start), every process
(gunicorn workers, Celery prefork children) writes its counts there and `/metrics` adds them
up; that directory must be emptied when the whole service starts (`manage.py reset_metrics`).
What lives in shared stores (queues, the circuit, backlogs) is read at scrape time instead.
"""

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)

from core.models import EntitlementSyncState, HeldRevocation, SyncRun, Trigger

logger = logging.getLogger(__name__)

NAMESPACE = "messages_entitlements"
# The worker's queues (worker/queues.py; core never imports the worker, a test checks they agree).
QUEUES = ("interactive", "bulk", "signals")
# The classes of an upstream answer (AnswerKind's values; a test checks they agree). Spelled
# here: the entitlements package imports this module, which must not import it back.
ANSWERS = (
    "authoritative",
    "no_information",
    "access_ended",
    "invalid",
    "bad_request",
    "not_asked",
    "configuration",
    "unavailable",
)
OTHER = "other"

_TRIGGERS = frozenset(Trigger.values)
_SYNC_STATUSES = frozenset(EntitlementSyncState.Status.values)
_RUN_STATUSES = frozenset(SyncRun.Status.values)
_RUN_USER_OUTCOMES = ("done", "failed", "skipped", "not_run")
_RUN_FAILURE_REASONS = frozenset(
    {"configuration", "incomplete", "fanout_failed", "fanout_interrupted"}
)
_SCOPES = frozenset(SyncRun.Scope.values)
_RESOLUTIONS = frozenset(HeldRevocation.Resolution.values)
_ANSWERS = frozenset(ANSWERS)
_TRANSITIONS = frozenset({"opened", "reopened", "closed"})
_REFUSALS = frozenset({"circuit_open", "rate_limited"})
_PRIORITIES = frozenset(QUEUES)
# DeployCenter's webhook events and what became of a signal (core/entitlements/change_signals.py;
# a test checks they agree, this module cannot import it).
_SIGNAL_EVENTS = frozenset(
    {"account.updated", "subscription.created", "subscription.updated", "subscription.deleted"}
)
_SIGNAL_RESULTS = frozenset({"requested", "collapsed", "no_user", "not_sent", "invalid", "refused"})

# Before any metric exists: each writes its file there as soon as it is defined.
if settings.PROMETHEUS_MULTIPROC_DIR:
    try:
        Path(settings.PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ImproperlyConfigured(
            f"PROMETHEUS_MULTIPROC_DIR: cannot create {settings.PROMETHEUS_MULTIPROC_DIR}: "
            f"{error.strerror}"
        ) from None

# Our metrics, when each process keeps its own (no PROMETHEUS_MULTIPROC_DIR).
_REGISTRY = CollectorRegistry(auto_describe=True)

SYNCS = Counter(
    "syncs",
    "User syncs that ended, by trigger and sync status (its label keeps the name outcome).",
    ["trigger", "outcome"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
GRANTED = Counter(
    "accesses_granted",
    "ADMIN accesses the sync granted, by trigger.",
    ["trigger"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
REVOKED = Counter(
    "accesses_revoked",
    "ADMIN accesses the sync revoked, by trigger.",
    ["trigger"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
HELD = Counter(
    "revocations_held",
    "Revocations a run held at its revocation budget.",
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
RESOLVED = Counter(
    "held_revocations_resolved",
    "Held revocations an operator released (revoked, kept, gone) or discarded.",
    ["resolution"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
UPSTREAM_CALLS = Counter(
    "upstream_requests",
    "Requests to the entitlements service, by answer class.",
    ["answer"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
UPSTREAM_SECONDS = Histogram(
    "upstream_request_seconds",
    "Time of one request to the entitlements service, by answer class.",
    ["answer"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40),
)
UPSTREAM_REFUSED = Counter(
    "upstream_refused",
    "Upstream requests not made: circuit open, or no rate-limit token in time.",
    ["reason"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
CIRCUIT_TRANSITIONS = Counter(
    "circuit_transitions",
    "Circuit breaker transitions: opened, reopened (the probe failed), closed.",
    ["transition"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
RATE_LIMIT_WAIT = Histogram(
    "rate_limit_wait_seconds",
    "Time a caller waited for a rate-limit token, by priority (0 when one was there).",
    ["priority"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30),
)
CHANGE_SIGNALS = Counter(
    "change_signals",
    "DeployCenter change signals received, by event type and result (refused: bad token).",
    ["event_type", "result"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
CHANGE_TO_RIGHTS = Histogram(
    "change_to_rights_seconds",
    "From an account's change signal to the sync that changed the account's rights.",
    namespace=NAMESPACE,
    registry=_REGISTRY,
    buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)
RUNS = Counter(
    "runs",
    "Resync runs that ended, by scope and status.",
    ["scope", "status"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
RUN_FAILURES = Counter(
    "run_failures",
    "Resync runs that ended failed, by why (the run's error code).",
    ["reason"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
RUN_USERS = Counter(
    "run_users",
    "Users of resync runs as their batches reported them: done and failed were asked, "
    "skipped could not be, not_run were left out when the run stopped.",
    ["outcome"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
)
RUN_SECONDS = Histogram(
    "run_duration_seconds",
    "Duration of resync runs that ended, by scope.",
    ["scope"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
    buckets=(1, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400),
)
RUN_USERS_PER_SECOND = Gauge(
    "run_users_per_second",
    "Users counted per second by the last resync run that ended, by scope.",
    ["scope"],
    namespace=NAMESPACE,
    registry=_REGISTRY,
    multiprocess_mode="mostrecent",
)


def _bounded(value: object, allowed: frozenset[str]) -> str:
    """The label value if it is one of the known ones, else "other": cardinality stays fixed."""
    text = str(value)
    return text if text in allowed else OTHER


def sync_ended(*, trigger: str, status: str) -> None:
    """One user's sync ended with this sync status (the label keeps its old name, outcome)."""
    SYNCS.labels(_bounded(trigger, _TRIGGERS), _bounded(status, _SYNC_STATUSES)).inc()


def accesses_changed(*, granted: int = 0, revoked: int = 0, trigger: str) -> None:
    """Accesses the sync granted or revoked, counted once where they are written."""
    trigger = _bounded(trigger, _TRIGGERS)
    if granted:
        GRANTED.labels(trigger).inc(granted)
    if revoked:
        REVOKED.labels(trigger).inc(revoked)


def revocations_held(*, count: int) -> None:
    """A run held `count` revocations at its budget."""
    if count:
        HELD.inc(count)


def held_revocations_resolved(*, resolution: str, count: int) -> None:
    """An operator resolved `count` held revocations this way."""
    if count:
        RESOLVED.labels(_bounded(resolution, _RESOLUTIONS)).inc(count)


def upstream_answered(*, answer: str, seconds: float) -> None:
    """One request to the entitlements service was classified as `answer` after `seconds`."""
    answer = _bounded(answer, _ANSWERS)
    UPSTREAM_CALLS.labels(answer).inc()
    UPSTREAM_SECONDS.labels(answer).observe(seconds)


def upstream_refused(*, reason: str) -> None:
    """The guard refused a request: circuit_open or rate_limited."""
    UPSTREAM_REFUSED.labels(_bounded(reason, _REFUSALS)).inc()


def circuit_transition(*, transition: str) -> None:
    """The shared circuit changed state (other values, e.g. "counted", are not transitions)."""
    if transition in _TRANSITIONS:
        CIRCUIT_TRANSITIONS.labels(transition).inc()


def rate_limit_waited(*, priority: str, seconds: float) -> None:
    """A caller got its token (or gave up) after waiting `seconds`."""
    RATE_LIMIT_WAIT.labels(_bounded(priority, _PRIORITIES)).observe(seconds)


def run_users_counted(*, counts: Mapping[str, int]) -> None:
    """A batch reported its users: how many were done, failed, skipped or not run."""
    for outcome in _RUN_USER_OUTCOMES:
        if counts.get(outcome):
            RUN_USERS.labels(outcome).inc(counts[outcome])


def run_failed(*, reason: str) -> None:
    """A resync run ended failed, for `reason` (its error code)."""
    RUN_FAILURES.labels(_bounded(reason, _RUN_FAILURE_REASONS)).inc()


def change_signal_received(*, event_type: object, result: str) -> None:
    """A change signal was answered: `result` says what it requested, or why it was refused."""
    CHANGE_SIGNALS.labels(
        _bounded(event_type, _SIGNAL_EVENTS), _bounded(result, _SIGNAL_RESULTS)
    ).inc()


def change_applied(*, seconds: float) -> None:
    """A change signal's sync changed the rights this long after the signal arrived."""
    CHANGE_TO_RIGHTS.observe(seconds)


def run_ended(*, scope: str, status: str, seconds: float, users: int) -> None:
    """A resync run ended: its status, duration and pace."""
    scope = _bounded(scope, _SCOPES)
    RUNS.labels(scope, _bounded(status, _RUN_STATUSES)).inc()
    RUN_SECONDS.labels(scope).observe(seconds)
    if seconds > 0:
        RUN_USERS_PER_SECOND.labels(scope).set(users / seconds)


def process_exited(*, pid: int) -> None:
    """Forget a dead process's live gauges (Celery's worker_process_shutdown, gunicorn's
    child_exit); its counters stay summed, as counters must."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
