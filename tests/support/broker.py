"""The Celery broker seen from the tests: the task messages waiting in its Redis queues, and the
project's Celery configuration pointed at another broker."""

import json
from base64 import b64decode
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis
from celery import Celery
from celery.contrib.testing.app import setup_default_app
from django.conf import settings

from worker.queues import BULK_QUEUE, INTERACTIVE_QUEUE

QUEUES = (INTERACTIVE_QUEUE, BULK_QUEUE)


def broker_key(name: str) -> str:
    """The Redis key of a broker structure (a queue, "unacked"), behind the run's broker key
    prefix (CELERY_BROKER_KEY_PREFIX: `make test` gives each checkout its own)."""
    return settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "") + name


def broker_keys(client: redis.Redis) -> list[bytes]:
    """The broker's keys on a Redis db: the queues, the unacked messages, the bindings."""
    keys = {*QUEUES, "unacked", "unacked_index", "unacked_mutex"}
    found = [broker_key(key).encode() for key in keys]
    for pattern in ("_kombu.*", *(f"{queue}*" for queue in QUEUES)):
        found.extend(client.scan_iter(match=broker_key(pattern)))
    return found


class BrokerQueues:
    """Read access to the task messages waiting in the Redis broker's queues."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url)

    def clear(self) -> None:
        self.client.delete(*map(broker_key, QUEUES))

    def length(self, queue: str) -> int:
        return self.client.llen(broker_key(queue))

    def messages(self, queue: str) -> list[dict]:
        """Each queued task as {"task", "id", "args", "expires"}, oldest first."""
        found = []
        # kombu LPUSHes and BRPOPs: the list tail is the oldest message.
        for raw in reversed(self.client.lrange(broker_key(queue), 0, -1)):
            message = json.loads(raw)
            body = json.loads(b64decode(message["body"]))
            headers = message["headers"]
            found.append(
                {
                    "task": headers["task"],
                    "id": headers["id"],
                    "args": body[0],
                    "expires": headers.get("expires"),
                }
            )
        return found


@contextmanager
def producer_app(broker_url: str):
    """The project's Celery configuration on another broker, as the current app."""
    app = Celery("producer", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.broker_url = broker_url
    # The settings' transport is the one of their own broker (ours for Redis): another kind
    # of broker takes the transport its URL names.
    if urlsplit(broker_url).scheme != urlsplit(settings.CELERY_BROKER_URL).scheme:
        app.conf.broker_transport = None
    # A worker started on this app runs in a test thread: Celery must close its database
    # connection after each task (settings' CELERY_DB_REUSE_MAX would keep it open past the
    # test, and the test database could not be flushed and dropped behind it).
    app.conf.CELERY_DB_REUSE_MAX = None
    # setup_default_app only restores the previous apps on exit; it does not switch.
    with setup_default_app(app):
        app.set_current()
        app.set_default()
        yield app
    app.close()
