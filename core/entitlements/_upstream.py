"""What the upstream guard's parts share: who is asking, and their Redis keys."""

from enum import StrEnum

from django.conf import settings
from django.core.cache import caches
from django_redis import get_redis_connection

_REDIS_CACHE_BACKEND = "django_redis.cache.RedisCache"


class Priority(StrEnum):
    """Who is asking: login syncs go before bulk (periodic, admin-wide) syncs."""

    INTERACTIVE = "interactive"
    BULK = "bulk"


def uses_redis() -> bool:
    """True when the default cache is django-redis, the store the breaker and the limit share."""
    return settings.CACHES["default"]["BACKEND"] == _REDIS_CACHE_BACKEND


def redis_key(name: str) -> str:
    """Namespace a Redis key with the cache prefix, read now so per-test prefixes apply."""
    prefix = caches["default"].key_prefix
    return f"{prefix}:entitlements:upstream:{name}" if prefix else f"entitlements:upstream:{name}"


def redis_connection():
    """The default cache's Redis connection."""
    return get_redis_connection("default")


def seconds_to_ms(seconds: float) -> int:
    """Milliseconds for a Redis expiry, at least 1 (0 would mean no expiry or an error)."""
    return max(1, round(seconds * 1000))
