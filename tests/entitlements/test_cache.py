"""The shared cache on real Redis, as a sync's fetch uses it: fresh hits, a person's request
asking anew, stale fallback and its limit, what is kept and under which key."""

import time

import pytest
from django.conf import settings
from django.core.cache import cache
from django_redis import get_redis_connection

from core.entitlements.backends.base import AnswerKind
from core.entitlements.cache import cache_key
from core.entitlements.errors import EntitlementsUnavailableError
from core.entitlements.sync import fetch_user_answer
from core.models import EntitlementSyncState, Trigger, User

ADMIN_DOMAINS = ("alpha.example.org", "beta.example.org")
CLAIMS = {"siret": "12345678900017"}


@pytest.fixture(autouse=True)
def _short_windows(settings):
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 300
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 3600


def _user(email: str, claims=CLAIMS) -> User:
    """A user whose login stored `claims`, loaded as a sync loads them (with the sync state)."""
    user = User.objects.create_user(email=email)
    EntitlementSyncState.objects.create(user=user, forwarded_claims=claims)
    return User.objects.select_related("sync_state").get(pk=user.pk)


@pytest.fixture
def admin(db):
    return _user("admin@alpha.example.org")


def _fetch(user, trigger=Trigger.PERIODIC):
    """The periodic run's fetch: the one that may take the fresh window."""
    return fetch_user_answer(user=user, trigger=trigger)


def _age_entry(user, seconds):
    """Travel in time: make the cached answer `seconds` older."""
    entry = cache.get(cache_key(user.pk))
    entry["fetched_at"] -= seconds
    cache.set(cache_key(user.pk), entry)


def test_suite_runs_the_cache_on_redis():
    assert settings.CACHES["default"]["BACKEND"] == "django_redis.cache.RedisCache"


def test_fresh_answer_is_served_without_calling_upstream(deploycenter_backend, admin):
    first = _fetch(admin)
    second = _fetch(admin)

    assert (first.cache, second.cache) == ("miss", "hit")
    assert (first.kind, first.domains) == (second.kind, second.domains)
    assert second.domains == ADMIN_DOMAINS
    assert deploycenter_backend.calls == 1


def test_a_persons_request_asks_upstream_inside_the_fresh_window(deploycenter_backend, admin):
    _fetch(admin)
    deploycenter_backend.set_admin_domains("admin@alpha.example.org", ["beta.example.org"])

    refreshed = _fetch(admin, trigger=Trigger.ADMIN)

    assert refreshed.cache == "miss"
    assert refreshed.domains == ("beta.example.org",)
    assert deploycenter_backend.calls == 2
    assert _fetch(admin).domains == ("beta.example.org",)


def test_answer_past_the_fresh_window_is_asked_again(deploycenter_backend, admin):
    _fetch(admin)
    _age_entry(admin, 301)

    assert _fetch(admin).cache == "miss"
    assert deploycenter_backend.calls == 2


@pytest.mark.parametrize("outage", ["503", "hang", "refused"])
def test_stale_answer_is_served_while_upstream_is_down(
    deploycenter_backend, admin, settings, outage
):
    _fetch(admin)
    _age_entry(admin, 301)
    if outage == "503":
        deploycenter_backend.fail_with(503)
    elif outage == "hang":
        deploycenter_backend.hang(3)
        settings.ENTITLEMENTS_BACKEND_PARAMETERS = deploycenter_backend.backend_parameters(
            timeout=[1, 0.3]
        )
    else:
        settings.ENTITLEMENTS_BACKEND_PARAMETERS = deploycenter_backend.backend_parameters(
            base_url="http://127.0.0.1:9/api/v1.0/entitlements/"
        )

    fetched = _fetch(admin)

    assert fetched.cache == "stale"
    assert fetched.domains == ADMIN_DOMAINS


def test_past_the_stale_window_upstream_down_is_an_error(deploycenter_backend, admin):
    _fetch(admin)
    _age_entry(admin, 3601)
    deploycenter_backend.fail_with(503)

    with pytest.raises(EntitlementsUnavailableError) as raised:
        _fetch(admin)

    assert raised.value.error_code == "http_503"


def test_no_cached_answer_and_upstream_down_is_an_error(deploycenter_backend, admin):
    deploycenter_backend.fail_with(429)

    with pytest.raises(EntitlementsUnavailableError):
        _fetch(admin)


def test_invalid_answer_is_returned_not_replaced_by_the_stale_one(deploycenter_backend, admin):
    _fetch(admin)
    deploycenter_backend.answer_raw(b"<html>maintenance</html>")

    fetched = _fetch(admin, trigger=Trigger.ADMIN)

    assert (fetched.cache, fetched.kind) == ("miss", AnswerKind.INVALID)
    # The last good answer is kept for a later outage.
    assert cache.get(cache_key(admin.pk))["answer"]["domains"] == list(ADMIN_DOMAINS)


def test_configuration_errors_are_not_cached(deploycenter_backend, admin):
    deploycenter_backend.fail_with(401)
    assert _fetch(admin).kind is AnswerKind.CONFIGURATION_ERROR
    deploycenter_backend.recover()

    assert _fetch(admin).kind is AnswerKind.AUTHORITATIVE
    assert deploycenter_backend.calls == 2


def test_no_information_answers_are_cached(deploycenter_backend, db):
    member = _user("admin@alpha.example.org", claims={"siret": "98765432100019"})
    _fetch(member)

    again = _fetch(member)

    assert (again.cache, again.error_code) == ("hit", "not_activated")


def test_changed_claim_or_email_is_a_miss(deploycenter_backend, admin):
    _fetch(admin)

    admin.sync_state.forwarded_claims = {"siret": "00000000099999"}
    unknown_siret = _fetch(admin)
    admin.sync_state.forwarded_claims = CLAIMS
    admin.email = "scoped@alpha.example.org"
    other_email = _fetch(admin)

    assert (unknown_siret.cache, unknown_siret.kind) == ("miss", AnswerKind.NO_INFORMATION)
    assert (other_email.cache, other_email.domains) == ("miss", ("beta.example.org",))


def test_entry_lives_for_the_stale_window_and_its_key_holds_no_email(deploycenter_backend, admin):
    _fetch(admin)

    keys = get_redis_connection("default").keys(f"{settings.CACHES['default']['KEY_PREFIX']}:*")

    names = [key.decode() for key in keys]
    assert f"{cache.key_prefix}:1:{cache_key(admin.pk)}" in names
    # The other keys are the upstream guard's (rate bucket, circuit): none names a person.
    assert not [name for name in names if "@" in name or "alpha" in name]
    assert 3500 < cache.ttl(cache_key(admin.pk)) <= 3600


def test_stale_window_counts_from_the_fetch(deploycenter_backend, admin, settings):
    settings.ENTITLEMENTS_STALE_FALLBACK_SECONDS = 1
    settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = 0
    _fetch(admin)
    deploycenter_backend.fail_with(503)
    assert _fetch(admin).cache == "stale"

    time.sleep(1.1)

    with pytest.raises(EntitlementsUnavailableError):
        _fetch(admin)
