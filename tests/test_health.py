"""`GET /healthz/`: 200 when the database, the cache and the broker answer, 503 naming what is
down, against real servers (the suite's PostgreSQL and Redis, a private redis-server)."""

import pytest
from django.core.cache import cache

from messages.celery_app import app as celery_app

pytestmark = pytest.mark.django_db

ALL_OK = {"database": "ok", "cache": "ok", "broker": "ok"}


@pytest.fixture
def cache_at(settings):
    """Point the Django cache at another Redis URL for this test."""

    def point(url: str) -> None:
        settings.CACHES = {
            **settings.CACHES,
            "default": {**settings.CACHES["default"], "LOCATION": url},
        }
        cache.close()

    return point


def test_answers_200_when_every_service_answers(client):
    response = client.get("/healthz/")

    assert response.status_code == 200
    assert response.json() == ALL_OK
    assert "no-cache" in response["Cache-Control"]


def test_names_the_broker_when_it_is_down(client, private_redis, monkeypatch):
    monkeypatch.setattr(celery_app.conf, "broker_url", private_redis.url)  # nothing listens

    response = client.get("/healthz/")

    assert response.status_code == 503
    assert response.json() == {**ALL_OK, "broker": "down"}


def test_names_the_cache_when_it_is_down(client, private_redis, cache_at):
    cache_at(private_redis.url)  # not started: nothing listens on its port

    response = client.get("/healthz/")

    assert response.status_code == 503
    assert response.json() == {**ALL_OK, "cache": "down"}


def test_recovers_when_the_cache_comes_back(client, private_redis, cache_at):
    private_redis.start()
    cache_at(private_redis.url)
    assert client.get("/healthz/").status_code == 200

    private_redis.stop()
    assert client.get("/healthz/").json() == {**ALL_OK, "cache": "down"}

    private_redis.start()
    response = client.get("/healthz/")
    assert response.status_code == 200
    assert response.json() == ALL_OK


def test_answers_a_probe_whatever_host_it_sends(client, settings):
    """A container probe sends its own Host (localhost, the container's name), which need not
    be one of the public names in DJANGO_ALLOWED_HOSTS."""
    settings.ALLOWED_HOSTS = ["messages.example.org"]

    response = client.get("/healthz/", HTTP_HOST="web:8000")

    assert response.status_code == 200
    assert response.json() == ALL_OK


def test_refuses_other_methods_with_405(client):
    response = client.post("/healthz/")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
