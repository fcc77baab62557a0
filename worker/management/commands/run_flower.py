"""manage.py run_flower: Flower, behind basic auth (its /metrics too), or not at all outside
debug; never writing into the app's metrics directory."""

import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Command(BaseCommand):
    help = (
        "Start Flower with basic auth from FLOWER_BASIC_AUTH (user:password[,user:password]). "
        "Refuses to start without it unless DJANGO_DEBUG is on and it listens on loopback."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=5555)
        parser.add_argument("--address", default="127.0.0.1")

    def handle(self, *args, **options):
        auth = settings.FLOWER_BASIC_AUTH
        address = options["address"]
        if not auth and not (settings.DEBUG and address in _LOOPBACK):
            raise CommandError(
                "FLOWER_BASIC_AUTH is not set: Flower would show every task and let anyone "
                "revoke them. Set FLOWER_BASIC_AUTH=user:password (only DJANGO_DEBUG on "
                "loopback may run it open)."
            )
        if auth and not all(_is_credential(pair) for pair in auth.split(",")):
            raise CommandError("FLOWER_BASIC_AUTH must be user:password[,user:password...]")
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "messages.settings"}
        # Flower reads its options from FLOWER_* variables: the password stays off the
        # command line (and out of `ps`). Its unauthenticated API would let anyone apply
        # tasks over HTTP: never on, whatever the environment says.
        env.pop("FLOWER_UNAUTHENTICATED_API", None)
        # Flower's own metrics stay in its process (its /metrics): in the app's multiprocess
        # directory they would join the app's /metrics, one series set per worker host name.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.pop("prometheus_multiproc_dir", None)
        if auth:
            env["FLOWER_BASIC_AUTH"] = auth
        else:
            env.pop("FLOWER_BASIC_AUTH", None)
            self.stderr.write("Flower starts WITHOUT authentication (debug, loopback only).")
        argv = [
            sys.executable,
            "-m",
            # The celery command line, Flower's /metrics behind its basic auth.
            "worker.flower_server",
            "-A",
            "messages",
            "flower",
            # Flower's options need `=` (a space makes tornado fail).
            f"--port={options['port']}",
            f"--address={address}",
        ]
        sys.stdout.flush()
        sys.stderr.flush()
        # Replace this process: honcho's signals reach Flower itself.
        os.execve(sys.executable, argv, env)  # noqa: S606 - fixed argv, no shell


def _is_credential(pair: str) -> bool:
    """Whether `pair` reads user:password with both parts present."""
    user, colon, password = pair.partition(":")
    return bool(colon and user.strip() and password)
