"""manage.py setup_demo: demo domains, users, a superuser and the local backend's mapping."""

import json
import os
import secrets
import shlex
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from core.models import EntitlementSyncState, MailDomain, User

DEMO_DOMAINS = ("alpha.example.org", "beta.example.org", "gamma.example.org")
DEMO_USERS = {
    "admin@alpha.example.org": "Alice Admin",
    "scoped@alpha.example.org": "Sam Scoped",
    "user@alpha.example.org": "Uma User",
}
# What the demo's entitlements service says: edit the file to grant or revoke.
DEMO_MAPPING = {
    "admins_by_email": {
        "admin@alpha.example.org": ["alpha.example.org", "beta.example.org"],
        "scoped@alpha.example.org": ["beta.example.org"],
    }
}
SUPERUSER_EMAIL = "operator@example.org"
# The demo users' sync state until their first login (shown in the admin's users list).
AWAITING_LOGIN = "demo_awaits_first_login"
LOCAL_BACKEND = "core.entitlements.backends.local.LocalEntitlementsBackend"


class Command(BaseCommand):
    help = (
        "Create the demo data (idempotent), the local backend's mapping file and the "
        "environment file `make run` starts the processes with; print the credentials."
    )

    def handle(self, *args, **options):
        data_dir = Path(settings.DATA_DIR)
        data_dir.mkdir(parents=True, exist_ok=True)
        mapping_file = data_dir / "demo_entitlements.json"
        if not mapping_file.exists():
            # Written once: the demo's story is to edit it.
            mapping_file.write_text(json.dumps(DEMO_MAPPING, indent=2) + "\n")
        password = _demo_password(data_dir / "demo_password")
        with transaction.atomic():
            for name in DEMO_DOMAINS:
                MailDomain.objects.get_or_create(name=name)
            for email, full_name in DEMO_USERS.items():
                user, created = User.objects.get_or_create(
                    email=email, defaults={"sub": f"demo:{email}", "full_name": full_name}
                )
                if created:
                    # The story starts at the reader's first login (README): until then the
                    # periodic run leaves the demo users out, as it leaves out anybody whose
                    # last sync found nothing to grant, and their login is what grants.
                    EntitlementSyncState.objects.create(
                        user=user,
                        status=EntitlementSyncState.Status.SKIPPED,
                        error_code=AWAITING_LOGIN,
                    )
            operator, _ = User.objects.get_or_create(
                email=SUPERUSER_EMAIL,
                defaults={"is_staff": True, "is_superuser": True, "full_name": "Demo Operator"},
            )
            if not operator.check_password(password):
                operator.set_password(password)
                operator.save(update_fields=["password"])
        env_file = data_dir / "demo.env"
        demo_env = {
            "ENTITLEMENTS_BACKEND": LOCAL_BACKEND,
            "ENTITLEMENTS_BACKEND_PARAMETERS": json.dumps({"mapping_file": str(mapping_file)}),
            # Reading the local file is cheap: no fresh-answer cache, so an edit of the mapping
            # shows at the very next sync.
            "ENTITLEMENTS_CACHE_TIMEOUT_SECONDS": "0",
            "FLOWER_BASIC_AUTH": f"{SUPERUSER_EMAIL}:{password}",
            # The demo is served on plain http: a browser would not send back secure cookies.
            "DJANGO_SECURE_COOKIES": "false",
            # Web, worker and beat add up their metrics here (`make run` empties it first).
            "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "metrics"),
        }
        # Shell quoting: honcho reads the file with shlex, which would eat JSON's quotes.
        _write_private(
            env_file, "".join(f"{name}={shlex.quote(value)}\n" for name, value in demo_env.items())
        )
        self.stdout.write(
            "\n".join(
                [
                    "Demo ready.",
                    f"  Django admin  http://{os.environ.get('WEB_BIND', '127.0.0.1:8000')}/admin/",
                    f"  Flower        http://{os.environ.get('FLOWER_ADDRESS', '127.0.0.1')}:"
                    f"{os.environ.get('FLOWER_PORT', '5555')}/",
                    f"  Log in as     {SUPERUSER_EMAIL} / {password} (both)",
                    f"  Entitlements  {mapping_file} (edit it to grant or revoke)",
                    f"  Environment   {env_file} (used by `make run` and by manage.py "
                    "when DATABASE_URL is unset)",
                    "  Try           .venv/bin/python manage.py simulate_login "
                    "admin@alpha.example.org",
                    "  Dry run       .venv/bin/python manage.py sync_entitlements --all --dry-run",
                ]
            )
        )


def _demo_password(path: Path) -> str:
    """The superuser's password: generated on the first run, kept in DATA_DIR afterwards."""
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(12)
    _write_private(path, password + "\n")
    return password


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read: it holds a password."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
