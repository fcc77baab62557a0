"""manage.py run_demo: `make run`'s processes (the Procfile) under honcho, stopped cleanly, with
the first login printed once the web server answers."""

import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from honcho import environ
from honcho.compat import ProcessManager
from honcho.manager import Manager
from honcho.printer import Printer

from core.management.commands.setup_demo import SUPERUSER_EMAIL

# How long the login banner waits for the web server before it is printed anyway.
_WEB_WAIT_SECONDS = 120
# How much longer than honcho's 5 s a process may take to stop before it is killed.
_STOP_WAIT_SECONDS = 25


class _LeaderOnly(ProcessManager):
    """Stop a process by signalling it alone: honcho signals its whole process group, so a Celery
    worker's pool children got SIGTERM beside their parent and were logged as killed; signalled
    alone, the parent stops them itself (a warm shutdown), as under docker compose."""

    def terminate(self, pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


class _DemoManager(Manager):
    """honcho's manager, signalling each process alone, and waiting longer before SIGKILL."""

    def __init__(self, printer):
        super().__init__(printer)
        self._procmgr = _LeaderOnly()
        self._kill_after: float | None = None

    def kill(self):
        """honcho SIGKILLs what still runs 5 s after SIGTERM; a worker's warm shutdown on the
        file broker takes about that long on a loaded machine: give it _STOP_WAIT_SECONDS."""
        if self._kill_after is None:
            self._kill_after = time.monotonic() + _STOP_WAIT_SECONDS
        if time.monotonic() >= self._kill_after:
            super().kill()


class Command(BaseCommand):
    help = (
        "Start the Procfile's processes (web, workers, beat, Flower) with the demo's environment "
        "(run setup_demo first; `make run` does both); Ctrl-C stops them all."
    )

    def handle(self, *args, **options):
        env_file = Path(settings.DATA_DIR) / "demo.env"
        if not env_file.is_file():
            raise CommandError(
                f"No {env_file}: run `manage.py setup_demo` first (`make run` does)."
            )
        # As `honcho start -e`: the file's values win over the environment's.
        demo_env = {**os.environ, **environ.parse(env_file.read_text())}
        procfile = environ.parse_procfile((Path(settings.BASE_DIR) / "Procfile").read_text())
        manager = _DemoManager(Printer(sys.stdout))
        for name, command in procfile.processes.items():
            # exec: the shell honcho starts is replaced by the program, which gets the signal.
            manager.add_process(name, f"exec {command}", env=demo_env)
        web = os.environ.get("WEB_BIND", "127.0.0.1:8000")
        threading.Thread(target=self._print_login_when_up, args=(web,), daemon=True).start()
        manager.loop()
        # 130 after Ctrl-C, as honcho start; `make run` takes that for a normal stop.
        sys.exit(manager.returncode)

    def _print_login_when_up(self, web: str) -> None:
        """Once the web server answers, the first login, last and apart from the processes'
        start-up lines."""
        deadline = time.monotonic() + _WEB_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                with urlopen(f"http://{web}/healthz/", timeout=2):
                    break
            except (URLError, OSError):
                time.sleep(1)
        password_file = Path(settings.DATA_DIR) / "demo_password"
        flower = f"{os.environ.get('FLOWER_ADDRESS', '127.0.0.1')}:"
        flower += os.environ.get("FLOWER_PORT", "5555")
        lines = [
            "The demo is up. Log in:",
            f"  Django admin  http://{web}/admin/",
            f"  Flower        http://{flower}/",
            f"  User          {SUPERUSER_EMAIL}",
            f"  Password      {password_file.read_text().strip()}",
            f"  (kept in {password_file}; print it again: cat {password_file})",
            "  Ctrl-C stops every process.",
        ]
        width = max(len(line) for line in lines) + 2
        banner = "\n".join(["=" * width, *(f" {line}" for line in lines), "=" * width])
        self.stdout.write(f"\n{banner}\n")
