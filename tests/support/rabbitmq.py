"""The RabbitMQ server (127.0.0.1:5672 unless RABBITMQ_URL says otherwise) as the tests' broker:
a virtual host of the suite's own, so its queues are never anybody else's."""

import os
import shutil
import socket
import subprocess
from urllib.parse import urlsplit

from kombu import Connection

# guest/guest is RabbitMQ's default user, accepted from loopback only.
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def unavailable_reason() -> str | None:
    """Why the tests cannot use RabbitMQ here, or None when they can."""
    parts = urlsplit(RABBITMQ_URL)
    try:
        with socket.create_connection((parts.hostname, parts.port or 5672), timeout=2):
            pass
    except OSError as error:
        return (
            f"no RabbitMQ server at {parts.hostname}:{parts.port or 5672} ({error}); "
            "start one (`rabbitmq-server -detached`, as .ci/run does) or set RABBITMQ_URL"
        )
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed: the tests' virtual host cannot be created"
    return None


def fresh_vhost(name: str) -> str:
    """Create the virtual host `name` anew (emptied of what an earlier run left), give the
    URL's user every permission on it, and return the broker URL pointing at it."""
    user = urlsplit(RABBITMQ_URL).username or "guest"
    # Deleting a missing vhost fails: that is fine, it is being created next.
    _rabbitmqctl("delete_vhost", name, check=False)
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    return RABBITMQ_URL.rstrip("/") + f"/{name}"


def delete_vhost(name: str) -> None:
    """Delete the virtual host `name` and everything in it."""
    _rabbitmqctl("delete_vhost", name)


def purge(url: str, queues: tuple[str, ...]) -> None:
    """Empty the task queues (declared as Celery declares them) of the vhost at `url`."""
    with Connection(url, connect_timeout=5) as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_declare(queue=queue, durable=True, auto_delete=False)
            channel.queue_purge(queue)


def _rabbitmqctl(*arguments: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *arguments], check=check, capture_output=True, timeout=120)


def close_connections(url: str) -> None:
    """Close every connection of the vhost at `url` (none of another vhost's), as a restart of
    the server would: clients see their connection lost."""
    vhost = urlsplit(url).path.lstrip("/")
    _rabbitmqctl("close_all_connections", "--vhost", vhost, "tests: broker restart")
