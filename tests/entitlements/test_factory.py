"""The backend is built once from the settings; a bad setting stops start-up, naming itself."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from core.entitlements.backends.deploycenter import DeployCenterEntitlementsBackend
from core.entitlements.backends.local import LocalEntitlementsBackend
from core.entitlements.factory import build_backend, forwarded_claim_names, get_backend
from tests.conftest import DEPLOYCENTER_BACKEND

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"base_url": "https://dc.test/api/v1.0/entitlements/", "service_id": 3, "api_key": "k3y"}


@pytest.mark.parametrize(
    ("path", "parameters", "message"),
    [
        ("core.entitlements.backends.nope.Backend", {}, "ENTITLEMENTS_BACKEND 'core.entitlements"),
        ("core.models.User", {}, "ENTITLEMENTS_BACKEND 'core.models.User' is not"),
        (DEPLOYCENTER_BACKEND, {"base_url": GOOD["base_url"]}, "missing a required argument"),
        (DEPLOYCENTER_BACKEND, {**GOOD, "verify": False}, "unexpected keyword argument 'verify'"),
        (DEPLOYCENTER_BACKEND, {**GOOD, "service_id": "x"}, "service_id must be a positive"),
        (DEPLOYCENTER_BACKEND, [], "must be a JSON object"),
    ],
    ids=["unknown path", "not a backend", "missing", "unknown", "invalid", "not an object"],
)
def test_bad_settings_are_refused_by_name(path, parameters, message):
    with pytest.raises(ImproperlyConfigured, match=message) as raised:
        build_backend(path=path, parameters=parameters)

    assert "k3y" not in str(raised.value)
    if path == DEPLOYCENTER_BACKEND:
        assert "ENTITLEMENTS_BACKEND_PARAMETERS" in str(raised.value)


def test_backend_is_built_once_and_rebuilt_when_settings_change(settings):
    assert isinstance(get_backend(), LocalEntitlementsBackend)
    assert get_backend() is get_backend()
    assert forwarded_claim_names() == []

    settings.ENTITLEMENTS_BACKEND = DEPLOYCENTER_BACKEND
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = {**GOOD, "oidc_claims": ["siret", "org"]}

    assert isinstance(get_backend(), DeployCenterEntitlementsBackend)
    assert forwarded_claim_names() == ["siret", "org"]


def _run(command, **env):
    """Run a project command in a fresh process with extra environment variables."""
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


MANAGE_CHECK = [sys.executable, "manage.py", "check"]
CELERY_WORKER = [
    str(Path(sys.executable).with_name("celery")),
    "-A",
    "messages",
    "worker",
    "--pool=solo",
    "--queues=engine-startup-test",
]


@pytest.mark.parametrize("command", [MANAGE_CHECK, CELERY_WORKER], ids=["manage.py", "worker"])
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ENTITLEMENTS_BACKEND": "core.nope.Backend"}, "ENTITLEMENTS_BACKEND 'core.nope.Backend'"),
        (
            {
                "ENTITLEMENTS_BACKEND": DEPLOYCENTER_BACKEND,
                "ENTITLEMENTS_BACKEND_PARAMETERS": '{"base_url": "https://dc.test/x/", '
                '"service_id": 3, "api_key": "k3y", "timeout": 0}',
            },
            "ENTITLEMENTS_BACKEND_PARAMETERS are invalid",
        ),
    ],
    ids=["unknown backend", "bad parameter"],
)
def test_processes_refuse_to_start_on_bad_settings(command, env, named):
    completed = _run(command, **env)

    assert completed.returncode != 0
    assert named in completed.stderr
    assert "k3y" not in completed.stderr


def test_good_settings_start():
    completed = _run(
        MANAGE_CHECK,
        ENTITLEMENTS_BACKEND=DEPLOYCENTER_BACKEND,
        ENTITLEMENTS_BACKEND_PARAMETERS='{"base_url": "https://dc.test/x/", "service_id": 3, '
        '"api_key": "k3y"}',
    )

    assert completed.returncode == 0, completed.stderr
