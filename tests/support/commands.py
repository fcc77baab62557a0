"""Running a management command as a test does, or as a user does (a fresh process)."""

import io
import os
import subprocess
import sys
from pathlib import Path

from django.core.management import call_command

BASE_DIR = Path(__file__).resolve().parents[2]


def run(*args) -> tuple[str, str]:
    """Call the command; return what it printed on stdout and on stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def manage_environment(**variables: str) -> dict[str, str]:
    """The environment of a shell where nothing is configured (the suite's DATABASE_URL, Redis
    and backend unset), plus `variables`: what a user's `python manage.py ...` gets."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY"}
        and not name.startswith("ENTITLEMENTS_")
    }
    return {**environment, **variables}


def manage(*arguments: str, **variables: str) -> subprocess.CompletedProcess:
    """`python manage.py ...` in a fresh process, in manage_environment(**variables)."""
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=BASE_DIR,
        env=manage_environment(**variables),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def prepare_demo(data_dir: Path) -> None:
    """A DATA_DIR set up as `make run` does before it starts the processes."""
    for command in (["migrate", "--noinput"], ["setup_demo"]):
        completed = manage(*command, DATA_DIR=str(data_dir))
        assert completed.returncode == 0, completed.stderr
