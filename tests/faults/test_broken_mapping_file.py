"""A local mapping file broken before the processes start (one trailing comma, as in the demo's
file) is handled as it is while they run: a real `celery -A messages worker` starts, syncs end
`invalid` with every access kept, and the log names the line and column to fix."""

import json

import pytest

from core.entitlements import request_sync
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, Trigger, User
from tests.faults.conftest import ALPHA, WORKER_DEFAULTS
from tests.support import WorkerProcess, wait_until, worker_environment

EMAIL = "demo-admin@example.org"
# The trailing comma after the last entry: "Expecting property name" at line 3, column 1.
BROKEN = '{\n  "admins_by_email": {"demo-admin@example.org": ["alpha.example.org"]},\n}\n'


@pytest.fixture
def broken_mapping_file(tmp_path, settings):
    mapping_file = tmp_path / "demo_entitlements.json"
    mapping_file.write_text(BROKEN)
    with pytest.raises(json.JSONDecodeError):
        json.loads(BROKEN)
    settings.ENTITLEMENTS_BACKEND = "core.entitlements.backends.local.LocalEntitlementsBackend"
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = {"mapping_file": str(mapping_file)}
    return mapping_file


def test_a_worker_starts_on_a_broken_mapping_file_and_revokes_nothing(
    broken_mapping_file, transactional_db, shared_broker, tmp_path
):
    user = User.objects.create(email=EMAIL, sub="demo-admin")
    access = MailDomainAccess.objects.create(
        user=user,
        maildomain=MailDomain.objects.create(name=ALPHA),
        source=MailDomainAccess.Source.ENTITLEMENTS,
    )
    worker = WorkerProcess(
        env=worker_environment(redis_url=shared_broker, data_dir=tmp_path, **WORKER_DEFAULTS),
        log_path=tmp_path / "worker.log",
    )
    try:
        worker.start()

        request_sync(user=user, trigger=Trigger.ADMIN)
        state = wait_until(
            lambda: EntitlementSyncState.objects.filter(
                user=user, status=EntitlementSyncState.Status.INVALID
            ).first(),
            timeout=60,
            message="the sync to end invalid",
        )
    finally:
        worker.stop()

    assert state.error_code == "mapping_file_invalid"
    assert MailDomainAccess.objects.filter(pk=access.pk).exists(), "nothing is revoked"
    log = worker.log()
    assert "mapping_file is not valid JSON: Expecting property name enclosed in double" in log
    assert "(line 3, column 1)" in log
    assert "Traceback" not in log
    assert EMAIL not in log
