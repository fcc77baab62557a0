"""The upstream is down for a long stretch: it answers 503, hangs past the client's timeout, or
refuses connections (its server is stopped). During full runs through real workers: no access
is revoked, each user's attempts are bounded by the retry policy, and the circuit breaker shared
through Redis stops the calls, so the upstream sees a handful of requests instead of one per
user and attempt. When it is back, calls resume by themselves. The stale cache stands in inside
its window and never past it.
"""

import json
import re
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from django_celery_results.models import TaskResult

from core.entitlements.sync_requests import request_resync, request_sync
from core.models import EntitlementSyncState, MailDomainAccess, SyncRun
from tests.deploycenter_stub import DeployCenterStub
from tests.faults.conftest import ALPHA, BETA, synced_domains
from tests.support import wait_until

HTTP_503 = "http 503"
HANG = "hang past the timeout"
REFUSED = "connection refused"

MAX_RETRIES = 3
COOLDOWN_SECONDS = 2
OUTAGE_SETTINGS = {
    "ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD": 5,
    "ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS": COOLDOWN_SECONDS,
    "ENTITLEMENTS_SYNC_MAX_RETRIES": MAX_RETRIES,
    "ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS": 0.5,
    "ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS": 2,
    "ENTITLEMENTS_SYNC_BATCH_SIZE": 25,
    "ENTITLEMENTS_SYNC_BATCH_CONCURRENCY": 4,
}
# Every call the DeployCenter client makes is logged once, with the user id (never the email).
_CALL = re.compile(r"deploycenter answered for user ([0-9a-f-]{36}): http (\S+)")
_UNAVAILABLE = re.compile(r"sync of user ([0-9a-f-]{36}) \(\w+\): upstream unavailable")


class OwnStub:
    """A DeployCenter stub of the test's own: it can stop (connections refused) and come back
    on the same port with the same accounts."""

    def __init__(self):
        self.stub = DeployCenterStub().start()
        self.port = urlsplit(self.stub.url).port
        self.admins: dict[str, list[str]] = {}

    def set_admin_domains(self, email: str, domains: list[str]) -> None:
        self.admins[email] = list(domains)
        self.stub.set_admin_domains(email, list(domains))

    def go_down(self, kind: str) -> None:
        if kind == HTTP_503:
            self.stub.fail_with(503)
        elif kind == HANG:
            self.stub.hang(30)
        else:
            self.stub.stop()

    def come_back(self, kind: str) -> None:
        if kind != REFUSED:
            self.stub.reset()
        else:
            self.stub = DeployCenterStub(port=self.port).start()
        for email, domains in self.admins.items():
            self.stub.set_admin_domains(email, domains)

    def close(self) -> None:
        self.stub.stop()


@pytest.fixture
def own_stub(upstream, settings):
    """The workers' upstream: a stub this test may stop; 1 s timeouts, so a hang fails fast."""
    stub = OwnStub()
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = stub.stub.backend_parameters(timeout=[1.0, 1.0])
    yield stub
    stub.close()


def calls_in(log: str) -> list[tuple[str, str]]:
    """(user id, http status) of every upstream call the worker log shows."""
    return _CALL.findall(log)


def run_and_wait(*, timeout: float = 120) -> SyncRun:
    """Start a full run as beat would, wait until it is done, return its row."""
    started = timezone.now()
    request_resync(trigger="periodic")
    return wait_until(
        lambda: SyncRun.objects.filter(
            started_at__gte=started, status=SyncRun.Status.DONE, users_enqueued__gt=0
        ).first(),
        timeout=timeout,
        every=0.25,
        message="the full run",
    )


def run_outage(
    start_worker, make_admins, own_stub, report_figure, *, kind, users, runs, run_every=0.0
) -> None:
    """`runs` full runs, one every `run_every` seconds (as beat would), while the upstream is
    down; then it comes back."""
    admins = make_admins(users, held=(ALPHA,), stub=own_stub)
    worker = start_worker(concurrency=2, **OUTAGE_SETTINGS)

    own_stub.go_down(kind)
    outage_started = time.monotonic()
    failed_runs = []
    for number in range(runs):
        time.sleep(max(0.0, outage_started + number * run_every - time.monotonic()))
        failed_runs.append(run_and_wait())
    outage_seconds = time.monotonic() - outage_started
    outage_log = worker.log()

    assert all(run.users_failed == users for run in failed_runs), failed_runs
    assert MailDomainAccess.objects.filter(user__in=admins).count() == users
    assert all(synced_domains(user) == {ALPHA} for user in admins), "an outage revoked"
    assert set(
        EntitlementSyncState.objects.filter(user__in=admins).values_list("status", flat=True)
    ) == {"unavailable"}
    calls = calls_in(outage_log)
    attempts = Counter(_UNAVAILABLE.findall(outage_log))
    assert set(attempts) == {str(user.pk) for user in admins}
    assert max(attempts.values()) <= runs * (1 + MAX_RETRIES), "retries must stay bounded"
    without_breaker = sum(attempts.values())
    # Threshold failures to open it, then one probe per cool-down (plus calls in flight).
    assert len(calls) <= 5 + 4 * 2 + 2 * (outage_seconds / COOLDOWN_SECONDS + 1)
    assert len(calls) < users / 4

    own_stub.come_back(kind)
    [login_user] = make_admins(1, held=(ALPHA,), stub=own_stub, prefix="login")
    # Nobody touches the breaker: its cool-down runs out by itself, then the next call probes.
    # (A sync whose few retries all fall inside the cool-down ends unavailable, and the next
    # periodic run covers it: see docs/reliability.md.)
    time.sleep(COOLDOWN_SECONDS)
    back = time.monotonic()
    request_sync(user=login_user, trigger="login")
    wait_until(
        lambda: synced_domains(login_user) == {ALPHA, BETA},
        timeout=30,
        message="the first sync once the upstream is back",
    )
    resumed_in = time.monotonic() - back
    recovered_run = run_and_wait()
    # The run covers the user who logged in too.
    assert (recovered_run.users_done, recovered_run.users_failed) == (users + 1, 0)
    assert all(synced_domains(user) == {ALPHA, BETA} for user in admins)

    report_figure(
        f"faults/upstream down ({kind}, {outage_seconds:.0f} s, {runs} full run(s) of "
        f"{users} users): 0 accesses revoked, {len(calls)} upstream calls instead of "
        f"{without_breaker} (circuit breaker), at most {max(attempts.values())} attempts per "
        f"user (bound {runs * (1 + MAX_RETRIES)}); back: after the {COOLDOWN_SECONDS} s "
        f"cool-down a login synced in {resumed_in:.2f} s (the probe closed the circuit), the "
        f"next run {users}/{users} ok"
    )


@pytest.mark.long
@pytest.mark.parametrize("kind", [HTTP_503, HANG, REFUSED])
def test_upstream_down_during_a_full_run(start_worker, make_admins, own_stub, report_figure, kind):
    run_outage(start_worker, make_admins, own_stub, report_figure, kind=kind, users=100, runs=1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", [HTTP_503, HANG, REFUSED])
def test_upstream_down_for_two_minutes(start_worker, make_admins, own_stub, report_figure, kind):
    run_outage(
        start_worker,
        make_admins,
        own_stub,
        report_figure,
        kind=kind,
        users=400,
        runs=4,
        run_every=30,
    )


FRESH_SECONDS = 1
STALE_SECONDS = 6


def test_stale_answer_stands_in_inside_its_window_and_never_past_it(
    start_worker, make_admins, upstream, settings, report_figure
):
    # Each request here must send its own task.
    settings.ENTITLEMENTS_SYNC_DEDUP_SECONDS = 0
    start_worker(
        ENTITLEMENTS_CACHE_TIMEOUT_SECONDS=FRESH_SECONDS,
        ENTITLEMENTS_STALE_FALLBACK_SECONDS=STALE_SECONDS,
        ENTITLEMENTS_SYNC_MAX_RETRIES=0,
    )
    [user] = make_admins(1)

    def sync() -> dict:
        """The sync's result; a sync not applied ends FAILURE, its state tells the rest."""
        task_id = request_sync(user=user, trigger="login").task_id
        ended = TaskResult.objects.filter(task_id=task_id, status__in=("SUCCESS", "FAILURE"))
        result = wait_until(ended.first, message="the sync's result")
        return json.loads(result.result) if result.status == "SUCCESS" else {"status": "failed"}

    first = sync()
    assert (first["status"], first["cache"]) == ("ok", "miss")
    cached_at = EntitlementSyncState.objects.get(user=user).finished_at
    upstream.fail_with(503)

    time.sleep(FRESH_SECONDS + 1)
    inside = sync()
    inside_age = (timezone.now() - cached_at).total_seconds()
    assert (inside["status"], inside["cache"], inside["changed"]) == ("ok", "stale", False)
    assert EntitlementSyncState.objects.get(user=user).error_code == "stale"

    time.sleep(max(0, STALE_SECONDS + 0.5 - (timezone.now() - cached_at).total_seconds()))
    past = sync()
    past_age = (timezone.now() - cached_at).total_seconds()
    assert past["status"] == "failed", past
    state = EntitlementSyncState.objects.get(user=user)
    assert state.status == "unavailable"
    assert synced_domains(user) == {ALPHA, BETA}, "an outage never revokes"

    # Back, and now without beta: the revocation lands at the next sync.
    upstream.recover()
    upstream.set_admin_domains(user.email, [ALPHA])
    assert sync()["removed"] == [BETA]
    report_figure(
        f"faults/stale cache (fresh {FRESH_SECONDS} s, stale window {STALE_SECONDS} s, "
        f"upstream 503): served stale at age {inside_age:.1f} s, refused at age "
        f"{past_age:.1f} s (status unavailable, accesses kept), the upstream's revocation "
        f"applied once it answered"
    )
