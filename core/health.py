"""`GET /healthz/`: whether the database, the cache and the broker answer this web process."""

import logging
import uuid
from collections.abc import Callable

from django.core.cache import cache
from django.db import connection
from django.http import HttpResponseNotAllowed, JsonResponse
from django.utils.cache import add_never_cache_headers

from messages.celery_app import app as celery_app

logger = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/healthz/", "/healthz"})
OK = "ok"
DOWN = "down"


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_cache() -> None:
    key = f"healthz:{uuid.uuid4().hex}"
    cache.set(key, OK, timeout=10)
    if cache.get(key) != OK:
        raise RuntimeError("the cache did not return the value just stored")
    cache.delete(key)


def _check_broker() -> None:
    # A fresh connection with no retry: the answer is about the broker now, not in a minute.
    with celery_app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=0)


_CHECKS: dict[str, Callable[[], None]] = {
    "database": _check_database,
    "cache": _check_cache,
    "broker": _check_broker,
}


def service_status() -> dict[str, str]:
    """Each service this process depends on, "ok" or "down"; why it is down goes to the log."""
    status = {}
    for name, check in _CHECKS.items():
        try:
            check()
        except Exception as error:  # any failure means down; the log says which
            logger.warning("health check: %s is down: %s: %s", name, type(error).__name__, error)
            status[name] = DOWN
        else:
            status[name] = OK
    return status


class HealthCheckMiddleware:
    """Answers `/healthz/` before anything else: 200 if every service is ok, else 503.

    Ahead of the host check, sessions and authentication, so a container or load-balancer
    probe gets an answer whatever Host header it sends and never creates a session. The body
    names services and states only: it is safe unauthenticated.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path not in HEALTH_PATHS:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        status = service_status()
        healthy = all(state == OK for state in status.values())
        response = JsonResponse(status, status=200 if healthy else 503)
        add_never_cache_headers(response)
        return response
