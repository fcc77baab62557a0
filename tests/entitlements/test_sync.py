"""sync_user_entitlements end to end: stub over HTTP, Redis cache, PostgreSQL, bookkeeping."""

import json
import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from core.entitlements import plan_sync, sync_user_entitlements
from core.entitlements.sync import _mark_started as mark_started
from core.entitlements.sync import load_users_starting_sync
from core.locks import user_lock
from core.models import EntitlementSyncState, MailDomain, MailDomainAccess, User

SIRET = "12345678900017"


@pytest.fixture
def domains(db):
    for name in ("alpha.example.org", "beta.example.org"):
        MailDomain.objects.create(name=name)


def _user(email="admin@alpha.example.org", claims=None):
    user = User.objects.create_user(email=email)
    EntitlementSyncState.objects.create(
        user=user, forwarded_claims={"siret": SIRET} if claims is None else claims
    )
    return user


def _accesses(user):
    return sorted(
        MailDomainAccess.objects.filter(user=user).values_list("maildomain__name", flat=True)
    )


def test_sync_grants_and_records(deploycenter_backend, domains):
    user = _user()

    result = sync_user_entitlements(user_id=user.pk, trigger="login", task_id="task-1")

    assert result.as_dict() == {
        "user_id": str(user.pk),
        "trigger": "login",
        "status": "ok",
        "error_code": "",
        "added": ["alpha.example.org", "beta.example.org"],
        "removed": [],
        "unchanged": 0,
        "cache": "miss",
        "held": [],
        "changed": True,
    }
    assert _accesses(user) == ["alpha.example.org", "beta.example.org"]
    state = EntitlementSyncState.objects.get(user=user)
    assert state.started_at <= state.finished_at
    assert (state.status, state.last_trigger, state.last_task_id) == ("ok", "login", "task-1")


def test_result_is_json_without_email_or_claims(deploycenter_backend, domains):
    user = _user()

    text = json.dumps(sync_user_entitlements(user_id=user.pk, trigger="login").as_dict())

    assert "@" not in text
    assert SIRET not in text


def test_periodic_sync_is_served_by_the_cache_a_person_asks_now(deploycenter_backend, domains):
    user = _user()
    sync_user_entitlements(user_id=user.pk, trigger="login")

    cached = sync_user_entitlements(user_id=user.pk, trigger="periodic")
    asked = sync_user_entitlements(user_id=user.pk, trigger="admin")

    assert (cached.cache, cached.changed) == ("hit", False)
    assert asked.cache == "miss"
    assert deploycenter_backend.calls == 2


def test_revocation_upstream_lands(deploycenter_backend, domains):
    user = _user()
    sync_user_entitlements(user_id=user.pk, trigger="login")
    deploycenter_backend.set_admin_domains("admin@alpha.example.org", ["beta.example.org"])

    result = sync_user_entitlements(user_id=user.pk, trigger="command")

    assert result.removed == ["alpha.example.org"]
    assert _accesses(user) == ["beta.example.org"]


def test_missing_claim_is_recorded_skipped_without_calling_upstream(deploycenter_backend, domains):
    user = _user(claims={})

    result = sync_user_entitlements(user_id=user.pk, trigger="login")

    assert (result.status, result.error_code, result.changed) == (
        "skipped",
        "missing_claim",
        False,
    )
    assert deploycenter_backend.calls == 0
    assert EntitlementSyncState.objects.get(user=user).error_code == "missing_claim"


def test_user_without_sync_state_gets_one(deploycenter_backend, domains):
    user = User.objects.create_user(email="admin@alpha.example.org")

    result = sync_user_entitlements(user_id=user.pk, trigger="admin")

    assert result.error_code == "missing_claim"
    assert EntitlementSyncState.objects.get(user=user).started_at is not None


def test_unavailable_upstream_is_recorded_and_returned(deploycenter_backend, domains):
    user = _user()
    MailDomainAccess.objects.create(
        user=user,
        maildomain=MailDomain.objects.get(name="alpha.example.org"),
        source=MailDomainAccess.Source.ENTITLEMENTS,
    )
    deploycenter_backend.fail_with(503)

    result = sync_user_entitlements(user_id=user.pk, trigger="login", task_id="task-2")

    assert (result.status, result.error_code, result.changed) == ("unavailable", "http_503", False)

    state = EntitlementSyncState.objects.get(user=user)
    assert (state.status, state.error_code, state.last_task_id) == (
        "unavailable",
        "http_503",
        "task-2",
    )
    assert _accesses(user) == ["alpha.example.org"]


def test_stale_answer_is_used_and_marked(deploycenter_backend, domains, settings):
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
    user = _user()
    sync_user_entitlements(user_id=user.pk, trigger="login")
    deploycenter_backend.fail_with(503)

    result = sync_user_entitlements(user_id=user.pk, trigger="periodic")

    assert (result.status, result.cache, result.error_code) == ("ok", "stale", "stale")
    assert _accesses(user) == ["alpha.example.org", "beta.example.org"]


def test_a_configuration_error_is_one_error_per_episode_and_a_warning_per_user(
    deploycenter_backend, domains, caplog
):
    users = [_user(), _user(email="scoped@alpha.example.org")]
    deploycenter_backend.fail_with(401)

    with caplog.at_level(logging.INFO, logger="core.entitlements"):
        results = [sync_user_entitlements(user_id=user.pk, trigger="login") for user in users]

    assert {(result.status, result.error_code) for result in results} == {("error", "http_401")}
    # One ERROR (one Sentry event) for the episode, saying what to check.
    [error] = [record for record in caplog.records if record.levelno == logging.ERROR]
    message = error.getMessage()
    assert all(word in message for word in ("http_401", "api_key", "service_id"))
    assert deploycenter_backend.api_key not in caplog.text
    assert "@alpha.example.org" not in caplog.text
    warnings = [
        record
        for record in caplog.records
        if record.levelno == logging.WARNING and record.name == "core.entitlements.sync"
    ]
    assert len(warnings) == len(users)


def test_dry_run_writes_nothing(deploycenter_backend, domains):
    user = _user()
    before = EntitlementSyncState.objects.values().get(user=user)

    result = plan_sync(user_id=user.pk)

    assert result.added == ["alpha.example.org", "beta.example.org"]
    assert _accesses(user) == []
    assert EntitlementSyncState.objects.values().get(user=user) == before


def test_a_dry_run_of_an_unavailable_upstream_says_so_and_records_nothing(
    deploycenter_backend, domains
):
    user = _user()
    before = EntitlementSyncState.objects.values().get(user=user)
    deploycenter_backend.fail_with(503)

    result = plan_sync(user_id=user.pk)

    assert (result.status, result.error_code, result.changed) == ("unavailable", "http_503", False)
    assert EntitlementSyncState.objects.values().get(user=user) == before


def test_unknown_user_is_does_not_exist(db):
    with pytest.raises(User.DoesNotExist):
        sync_user_entitlements(user_id="00000000-0000-0000-0000-000000000000", trigger="login")


class TestUnderTheUsersLock:
    """A user's sync holds their lock; another sync holding it makes this one a skip."""

    def test_the_lock_is_taken_and_released(self, deploycenter_backend, domains):
        user = _user()

        result = sync_user_entitlements(user_id=user.pk, trigger="login", task_id="task-1")

        assert result.status == "ok"
        assert not user_lock(user.pk).locked()

    @pytest.mark.parametrize(
        ("started_after_request", "error_code", "worth_retrying"),
        [(False, "locked", True), (True, "served_by_running_sync", False)],
    )
    def test_a_sync_held_elsewhere_is_skipped_and_said_why(
        self, deploycenter_backend, domains, started_after_request, error_code, worth_retrying
    ):
        user = _user()
        now = timezone.now()
        EntitlementSyncState.objects.filter(user=user).update(
            requested_at=now, started_at=now + timedelta(seconds=1 if started_after_request else -1)
        )
        other = user_lock(user.pk, owner="another-task")
        assert other.acquire()
        try:
            result = sync_user_entitlements(user_id=user.pk, trigger="login", task_id="task-2")
        finally:
            other.release()

        assert (result.status, result.error_code, result.worth_retrying) == (
            "skipped",
            error_code,
            worth_retrying,
        )
        assert _accesses(user) == []
        assert deploycenter_backend.calls == 0

    def test_the_same_task_takes_back_the_lock_its_killed_run_left(
        self, deploycenter_backend, domains
    ):
        user = _user()
        assert user_lock(user.pk, owner="task-1").acquire()

        result = sync_user_entitlements(user_id=user.pk, trigger="login", task_id="task-1")

        assert result.status == "ok"
        assert not user_lock(user.pk).locked()


def test_a_batch_start_is_recorded_for_users_with_and_without_a_state_row(db):
    with_row = User.objects.create_user(email="with@example.org")
    EntitlementSyncState.objects.create(user=with_row, forwarded_claims={"siret": "1"})
    without_row = User.objects.create_user(email="without@example.org")
    before = timezone.now()

    loaded = load_users_starting_sync(user_ids=[with_row.pk, without_row.pk])

    assert {user.pk for user in loaded} == {with_row.pk, without_row.pk}
    states = {state.user_id: state for state in EntitlementSyncState.objects.all()}
    assert set(states) == {with_row.pk, without_row.pk}
    assert all(state.started_at >= before for state in states.values())
    # Only the start is written: the row's claims stay.
    assert states[with_row.pk].forwarded_claims == {"siret": "1"}


def test_a_state_row_deleted_after_loading_is_made_again_at_the_start(db):
    user = User.objects.create_user(email="gone@example.org")
    EntitlementSyncState.objects.create(user=user)
    loaded = list(User.objects.select_related("sync_state").filter(pk=user.pk))
    EntitlementSyncState.objects.filter(user=user).delete()

    mark_started(loaded)

    assert EntitlementSyncState.objects.get(user=user).started_at is not None
