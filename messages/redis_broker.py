"""The Redis broker: kombu's Redis transport, whose channel survives Celery 5.7's second close
of a lost connection."""

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


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel`."""

    Channel = Channel
