"""The RabbitMQ server (127.0.0.1:5672 unless RABBITMQ_URL says otherwise) as the tests' broker:
a virtual host of the suite's own, so its queues are never anybody else's. Tests that restart
the broker run a private node of their own (PrivateRabbitMQ)."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
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


class PrivateRabbitMQ:
    """A rabbitmq-server node of the test's own, on free ports, which a test may stop and start
    again: its directory (queues, logs) outlives a stop, so a restart reloads its durable queues.
    The shared server is never touched; epmd is shared, the node's name is unique."""

    def __init__(self):
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            pytest.skip("rabbitmq-server is not installed: no private RabbitMQ node to restart")
        self.port, self.dist_port = _free_port(), _free_port()
        self.node = f"tests{os.getpid()}_{self.port}@localhost"
        # Under /tmp rather than pytest's tmp_path: the server runs as the `rabbitmq` user,
        # who cannot enter root's private pytest folder.
        self.directory = Path(tempfile.mkdtemp(prefix=f"rabbitmq-{self.port}-"))
        # The system's rabbitmq.conf listens on 5672, the shared server's port: our own config.
        (self.directory / "node.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.directory / "enabled_plugins").write_text("[].\n")
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.process = None

    def start(self) -> None:
        """Start the node (run as root, it switches to the `rabbitmq` user, hence the chown)
        and wait until it accepts AMQP connections."""
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.directory)], check=True)
        environment = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "node.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.directory / "feature_flags"),
        }
        # A child process, not `-detached`: a failed start must be seen, not silent.
        self.process = subprocess.Popen(
            ["rabbitmq-server"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private rabbitmq-server exited; see {self.directory}/log")
            try:
                with Connection(self.url, connect_timeout=2) as connection:
                    connection.connect()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"private rabbitmq-server did not start; see {self.directory}/log")

    def stop(self) -> None:
        """Stop the node as an operator does (`rabbitmqctl stop`); its data stays on disk."""
        if self.process and self.process.poll() is None:
            subprocess.run(
                ["rabbitmqctl", "-q", "-n", self.node, "stop"], capture_output=True, timeout=120
            )
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def restart(self) -> None:
        """Stop the node, leave it down a second, start it again on the same data."""
        self.stop()
        time.sleep(1)
        self.start()

    def remove(self) -> None:
        """Stop the node and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
