"""The Procfile's processes run as `make run` runs them: `honcho start -f Procfile NAME...`,
in a session of their own, logging to a file; a test can read each process's lines, find its
processes and see whether honcho still runs."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.support.workers import BASE_DIR, _stop_with_parent

BIN = Path(sys.executable).parent


class ProcfileProcesses:
    """`honcho start` of some of the Procfile's processes (its leader and their sessions)."""

    def __init__(self, *, names: tuple[str, ...], env: dict[str, str], log_path: Path):
        self.names = names
        self.env = {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"}
        self.log_path = Path(log_path)
        self.honcho: subprocess.Popen | None = None
        self._log_file = None

    def start(self, *, timeout: float = 120.0) -> "ProcfileProcesses":
        """Start honcho and wait until every started worker logged its "ready." line."""
        self._log_file = self.log_path.open("ab")
        self.honcho = subprocess.Popen(
            [BIN / "honcho", "start", "-f", "Procfile", "--no-colour", *self.names],
            cwd=BASE_DIR,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_stop_with_parent,
        )
        for name in self.names:
            if name.startswith("worker"):
                self.wait_for(name, "ready.", timeout=timeout)
        return self

    def lines(self, name: str) -> list[str]:
        """What process `name` (any of its incarnations) wrote so far."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        # honcho prefixes each line with its time and the process's name: "12:00:00 web.1 | ".
        return [line for line in text.splitlines() if f" {name}.1 " in line[:40]]

    def count(self, name: str, text: str) -> int:
        """How many of `name`'s lines contain `text`."""
        return sum(text in line for line in self.lines(name))

    def wait_for(self, name: str, text: str, *, count: int = 1, timeout: float = 120.0) -> None:
        """Wait until `name` wrote `count` lines containing `text`."""
        deadline = time.monotonic() + timeout
        while self.count(name, text) < count:
            if self.honcho.poll() is not None:
                raise RuntimeError(f"honcho exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no {text!r} line (x{count}):\n{self.tail()}")
            time.sleep(0.1)

    def worker_pid(self, name: str) -> int | None:
        """The main process of Procfile worker `name` (not its pool), None if it is gone."""
        hostname = f"--hostname={name.removeprefix('worker-')}@"
        for process in _session(self.honcho.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                arguments = process.cmdline()
                if (
                    any(argument.startswith(hostname) for argument in arguments)
                    # Neither the respawning parent nor a pool child (same command line).
                    and "messages.respawn" not in arguments
                    and process.parent().cmdline() != arguments
                ):
                    return process.pid
        return None

    def running(self) -> bool:
        """Whether honcho still runs (it stops everything when a process of its own exits)."""
        return self.honcho is not None and self.honcho.poll() is None

    def tail(self, characters: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-characters:]

    def stop(self, *, timeout: float = 60.0) -> None:
        """SIGTERM to honcho, as Ctrl-C in `make run`; SIGKILL whatever is left after `timeout`."""
        if self.honcho is None:
            return
        processes = _session(self.honcho.pid)
        if self.honcho.poll() is None:
            self.honcho.send_signal(signal.SIGTERM)
            try:
                self.honcho.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.honcho.kill()
                self.honcho.wait(timeout=10)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _session(pid: int) -> list[psutil.Process]:
    """Honcho and every process it started (each in a session of its own)."""
    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
