"""The engine's upstream calls go through the shared circuit breaker: an outage costs a few
calls, not one per user, and calls resume by themselves when the upstream is back."""

import time

import pytest

from core.entitlements.backends.base import AnswerKind
from core.entitlements.errors import EntitlementsUnavailableError
from core.entitlements.sync import fetch_user_answer
from core.entitlements.upstream_guard import Priority, upstream_status
from core.models import EntitlementSyncState, Trigger, User

CLAIMS = {"siret": "12345678900017"}


@pytest.fixture(autouse=True)
def _breaker(settings, db):
    settings.ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = 3
    settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = 0.5
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 0


def _fetch(index: int):
    """A run's fetch for a new user: nothing cached, so it asks upstream."""
    user = User.objects.create_user(email=f"user{index}@alpha.example.org")
    EntitlementSyncState.objects.create(user=user, forwarded_claims=CLAIMS)
    user = User.objects.select_related("sync_state").get(pk=user.pk)
    return fetch_user_answer(user=user, trigger=Trigger.PERIODIC, priority=Priority.BULK)


def test_an_outage_opens_the_circuit_and_stops_calling_upstream(deploycenter_backend, settings):
    # The circuit stays open through the 20 fetches however slow the machine (with the fixture's
    # 0.5 s, a loaded one saw a probe call after the cool-down: 4 calls).
    settings.ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = 60
    deploycenter_backend.fail_with(503)

    codes = []
    for index in range(20):
        with pytest.raises(EntitlementsUnavailableError) as raised:
            _fetch(index)
        codes.append(raised.value.error_code)

    assert deploycenter_backend.calls == 3
    assert codes[:3] == ["http_503"] * 3
    assert set(codes[3:]) == {"circuit_open"}
    assert upstream_status()["circuit"]["state"] == "open"


def test_calls_resume_by_themselves_after_the_cool_down(deploycenter_backend):
    deploycenter_backend.fail_with(503)
    for index in range(3):
        with pytest.raises(EntitlementsUnavailableError):
            _fetch(index)
    deploycenter_backend.recover()

    time.sleep(0.6)
    fetched = _fetch(99)

    assert fetched.cache == "miss"
    assert deploycenter_backend.calls == 4
    assert upstream_status()["circuit"]["state"] == "closed"


def test_an_answer_that_is_no_outage_closes_the_circuit(deploycenter_backend):
    deploycenter_backend.fail_with(503)
    for index in range(3):
        with pytest.raises(EntitlementsUnavailableError):
            _fetch(index)
    deploycenter_backend.fail_with(401)  # our credentials are wrong: the upstream is up

    time.sleep(0.6)
    fetched = _fetch(99)

    assert fetched.kind is AnswerKind.CONFIGURATION_ERROR
    assert upstream_status()["circuit"]["state"] == "closed"


def test_local_backend_is_never_throttled_or_cut(settings, db):
    settings.ENTITLEMENTS_BACKEND = "core.entitlements.backends.local.LocalEntitlementsBackend"
    settings.ENTITLEMENTS_BACKEND_PARAMETERS = {"admins_by_email": {}}
    settings.ENTITLEMENTS_RATE_LIMIT_PER_SECOND = 1
    settings.ENTITLEMENTS_RATE_LIMIT_BURST = 1

    started = time.monotonic()
    for index in range(20):
        assert _fetch(index).is_authoritative

    # Throttled, 20 fetches at 1 per second (burst 1) would take 19 s at least; unthrottled,
    # well under a second on a quiet machine (the bound leaves room for a loaded one).
    assert time.monotonic() - started < 10
