"""core/entitlements/_upstream.py: what the guard's parts share: the Redis store (the Django
cache's), keys under the cache's prefix, expiries in milliseconds."""

import pytest
from django.core.cache import cache

from core.entitlements._upstream import redis_connection, redis_key, seconds_to_ms, uses_redis


def test_the_guard_shares_the_django_caches_redis():
    assert uses_redis()
    key = redis_key("probe-of-this-test")

    redis_connection().set(key, "x", px=seconds_to_ms(5))

    # The same server and db as the cache: its client reads the raw key back.
    assert cache.client.get_client().get(key) == b"x"


def test_a_file_cache_is_not_redis(settings, tmp_path):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(tmp_path),
        }
    }

    assert not uses_redis()


def test_keys_live_under_the_caches_prefix(settings):
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": "site-a"},
    }
    assert redis_key("circuit") == "site-a:entitlements:upstream:circuit"

    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": ""},
    }
    assert redis_key("circuit") == "entitlements:upstream:circuit"


@pytest.mark.parametrize(("seconds", "ms"), [(1.5, 1500), (0.0004, 1), (0, 1), (30, 30_000)])
def test_an_expiry_is_at_least_one_millisecond(seconds, ms):
    assert seconds_to_ms(seconds) == ms
