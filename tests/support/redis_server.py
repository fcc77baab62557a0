"""A throwaway redis-server on a free port, which a test may stop and start again: tests that
kill or stop a broker never touch the shared Redis."""

import socket
import subprocess
import time

import redis


class PrivateRedis:
    """A redis-server subprocess; `stop` then `start` keeps its port. Without persistence by
    default; `persistent` keeps every write in an append-only file, as docker-compose.yml's
    Redis does, so a restart loses nothing."""

    def __init__(self, directory, *, persistent: bool = False):
        self.directory = directory
        self.persistent = persistent
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> None:
        """Start the server (empty unless persistent) and wait until it answers."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        try:
            for _ in range(100):
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        """Stop the server (SIGTERM to its own pid); its data is gone unless persistent."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
