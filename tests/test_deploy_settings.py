"""Production settings pass Django's deployment check behind a TLS proxy, while `make run`'s
demo environment still serves plain http (settings read in a fresh interpreter each time)."""

import io
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from django.core.management import call_command
from honcho.environ import parse as parse_env_file

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_BACKEND = "core.entitlements.backends.local.LocalEntitlementsBackend"
_SHOWN = (
    "SECURE_SSL_REDIRECT",
    "SECURE_PROXY_SSL_HEADER",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
)


def _django(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run Python in a fresh interpreter with only the given environment (plus PATH)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env={
            "PATH": os.environ["PATH"],
            "DJANGO_SETTINGS_MODULE": "messages.settings",
            "DATA_DIR": str(tmp_path),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _settings_under(tmp_path, **env: str) -> dict:
    script = (
        "import json; from django.conf import settings; "
        f"print(json.dumps({{n: getattr(settings, n, None) for n in {list(_SHOWN)!r}}}))"
    )
    result = _django(tmp_path, "-c", script, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def production_env() -> dict[str, str]:
    return {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "messages.example.org",
        "DJANGO_BEHIND_TLS_PROXY": "true",
        "DATABASE_URL": "postgres://messages:x@postgres.invalid:5432/messages",
        "REDIS_URL": "redis://redis.invalid:6379/0",
        "ENTITLEMENTS_BACKEND": LOCAL_BACKEND,
        "ENTITLEMENTS_BACKEND_PARAMETERS": '{"admins_by_email": {}}',
    }


def test_production_settings_pass_the_deployment_check(tmp_path):
    result = _django(
        tmp_path,
        "manage.py",
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        **production_env(),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues (0 silenced)" in result.stdout


def test_production_settings_redirect_to_https_with_hsts_and_secure_cookies(tmp_path):
    assert _settings_under(tmp_path, **production_env()) == {
        "SECURE_SSL_REDIRECT": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 365 * 24 * 3600,
    }


def test_make_run_demo_environment_serves_plain_http(db, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    call_command("setup_demo", stdout=io.StringIO())
    demo_env = parse_env_file((tmp_path / "demo.env").read_text())

    shown = _settings_under(tmp_path, **demo_env)

    assert (shown["SECURE_SSL_REDIRECT"], shown["SESSION_COOKIE_SECURE"]) == (False, False)
    assert (shown["CSRF_COOKIE_SECURE"], shown["SECURE_PROXY_SSL_HEADER"]) == (False, None)
