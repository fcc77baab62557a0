"""The Redis broker: kombu's Redis transport, whose channel survives Celery 5.7's second close
of a lost connection and builds no Redis client per publish."""

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A Redis channel that reports a detached transport as a lost connection.

    When the broker goes away while tasks run, Celery 5.7's consumer first collects the
    connection (which detaches the transport from it), then closes it again. The second close
    tries to put the running tasks' messages back on the queue through the detached transport,
    and kombu fails on `None.hostname` with an AttributeError, which no caller expects: the
    worker stopped with "Unrecoverable error" (celery/kombu#582 is the same path from another
    door). Raised as a connection error, it is ignored like every other failure of a closing
    connection: the worker reconnects, and the messages stay in the unacked index, which
    redelivers them after the visibility timeout.
    """

    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        # kombu's private method, untyped in its stubs: the one place the transport is read.
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]

    # The client every publish of this channel goes through (see conn_or_acquire).
    _publish_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client=None) -> Iterator[redis.Redis]:
        """The client a publish (or a queue's size, a purge...) goes through: one per channel.

        kombu builds a new redis.Redis around the channel's pool at every call, twice per
        task sent (the task, then its `task-sent` event): ~0.07 ms of CPU each, a seventh of
        a login's publish (docs/performance.md, figure 14). A client holds no connection of
        its own (it takes one from the pool per command, thread-safely), so one serves them
        all; it is built again when the channel's pool is (kombu drops the pool when the
        connection is lost).
        """
        if client:
            yield client
            return
        publish_client = self._publish_client
        if publish_client is None or publish_client.connection_pool is not self.pool:
            # kombu's private method, untyped in its stubs, as `_connparams` above.
            publish_client = self._publish_client = self._create_client()  # type: ignore[attr-defined]
        yield publish_client


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel`."""

    Channel = Channel
