"""`manage.py sync_entitlements --all --dry-run`, a real process asking the DeployCenter stub
over HTTP, predicts what the real run then does through a real worker: the revocations of an
ended subscription past its window, the revocations the run's budget holds, and those the
identity rule holds. Before, the dry run said nothing would change six seconds before the run
revoked."""

import re
import subprocess
import sys
from datetime import timedelta

from django.utils import timezone

from core.entitlements import request_resync
from core.models import EntitlementSyncState, HeldRevocation, SyncRun
from tests.deploycenter_stub import GAMMA_SIRET
from tests.faults.conftest import ALPHA, synced_domains
from tests.support import wait_until, worker_environment
from tests.support.workers import BASE_DIR

# A budget of one revocation: the run applies the first that comes, holds the others.
BUDGET = {"ENTITLEMENTS_MAX_REVOKE_SHARE": 0, "ENTITLEMENTS_MAX_REVOKE_MIN": 1}
WINDOW = {"ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS": 60}


def test_the_dry_run_predicts_the_runs_revocations_and_holds(
    start_worker, make_admins, upstream, shared_broker, tmp_path, settings
):
    # Two users of an organisation without a subscription (the stub's Gamma), ended two
    # minutes ago: past the 60 s window.
    ended = make_admins(2, upstream_domains=(), held=(ALPHA,), prefix="ended")
    EntitlementSyncState.objects.filter(user__in=ended).update(
        status="access_ended",
        error_code="not_activated",
        access_ended_since=timezone.now() - timedelta(minutes=2),
        forwarded_claims={"siret": GAMMA_SIRET},
    )
    # Two users the upstream no longer names.
    emptied = make_admins(2, upstream_domains=(), held=(ALPHA,), prefix="emptied")
    # One whose e-mail sent upstream changed since the last answer, which now names nothing.
    [moved] = make_admins(1, upstream_domains=(), held=(ALPHA,), prefix="moved")
    EntitlementSyncState.objects.filter(user=moved).update(upstream_identity="0" * 64)

    environment = worker_environment(
        redis_url=shared_broker, data_dir=tmp_path, LOG_LEVEL="WARNING", **BUDGET, **WINDOW
    )
    dry = subprocess.run(
        [sys.executable, "manage.py", "sync_entitlements", "--all", "--dry-run"],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    summary = "The run would revoke 1 (budget 1), hold 3 at its budget and 1 by the identity rule."
    assert summary in dry.stdout, dry.stdout
    ended_revocations = re.findall(rf"{ALPHA} \(subscription ended\)", dry.stdout)
    budget_holds = re.findall(rf"hold the revocation of {ALPHA} \(run budget\)", dry.stdout)
    assert len(ended_revocations) + len(budget_holds) == 4
    assert f"{moved.email}: would hold the revocation of {ALPHA} (identity_changed)" in dry.stdout
    assert SyncRun.objects.count() == 0, "a dry run writes nothing"
    assert all(synced_domains(user) == {ALPHA} for user in [*ended, *emptied, moved])

    # The real run, through a worker with the same settings.
    start_worker(**BUDGET, **WINDOW)
    task_id = request_resync(trigger="periodic").task_id
    run = wait_until(
        lambda: SyncRun.objects.filter(task_id=task_id).exclude(status="running").first(),
        timeout=60,
        message="the run",
    )

    held = HeldRevocation.objects.filter(resolution="pending")
    assert run.accesses_revoked == 1
    assert held.filter(reason="run_budget").count() == 3
    assert list(held.filter(reason="identity_changed").values_list("user", flat=True)) == [moved.pk]
    revoked = [user for user in [*ended, *emptied] if synced_domains(user) == set()]
    assert len(revoked) == 1
