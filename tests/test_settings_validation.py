"""A malformed environment variable stops start-up with a message naming the variable."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def start_django(tmp_path, code: str = "", **overrides: str) -> subprocess.CompletedProcess:
    """Run `django.setup()`, then `code`, in a fresh interpreter with the given environment
    variables."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "messages.settings",
        "DJANGO_SECRET_KEY": "test-secret",
        "DATA_DIR": str(tmp_path),
        **overrides,
    }
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_valid_environment_starts(tmp_path):
    result = start_django(tmp_path)

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DJANGO_DEBUG", "maybe"),
        ("DATABASE_URL", "notaurl"),
        ("DATABASE_URL", "mysql://db/messages"),
        ("ENTITLEMENTS_BACKEND_PARAMETERS", "{bad"),
        ("ENTITLEMENTS_BACKEND_PARAMETERS", "[1, 2]"),
        ("REDIS_URL", "http://x"),
        ("ENTITLEMENTS_CACHE_TIMEOUT_SECONDS", "abc"),
        ("ENTITLEMENTS_CACHE_TIMEOUT_SECONDS", "-1"),
        ("PROVISIONING_MAX_DOMAINS", "0"),
        ("FEATURE_MAILDOMAIN_CREATE", "sometimes"),
        ("FEATURE_MAILDOMAIN_MANAGE_ACCESSES", "2"),
        ("SENTRY_DSN", "not-a-dsn"),
        ("ENTITLEMENTS_MAX_REVOKE_SHARE", "1.5"),
        ("ENTITLEMENTS_MAX_REVOKE_SHARE", "-0.1"),
        ("ENTITLEMENTS_MAX_REVOKE_MIN", "-1"),
        ("ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS", "a day"),
        ("ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS", "-1"),
    ],
)
def test_bad_value_stops_start_up_naming_the_variable(tmp_path, name, value):
    result = start_django(tmp_path, **{name: value})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr


@pytest.mark.parametrize(
    ("broker", "redis_only"),
    [("redis://127.0.0.1:6379/0", True), ("amqp://guest:guest@127.0.0.1:5672/", False)],
)
def test_redis_only_transport_options_go_to_redis_brokers_only(tmp_path, broker, redis_only):
    result = start_django(
        tmp_path,
        "from django.conf import settings; print(sorted(settings.CELERY_BROKER_TRANSPORT_OPTIONS))",
        CELERY_BROKER_URL=broker,
    )

    assert result.returncode == 0, result.stderr
    # kombu's amqp transport has no visibility timeout nor unacked restore: RabbitMQ redelivers
    # a message when its consumer's connection closes (docs/operations.md, "RabbitMQ").
    options = result.stdout
    assert ("visibility_timeout" in options) is redis_only
    assert ("unacked_restore_interval" in options) is redis_only


class TestRenamedVariables:
    """A variable renamed to name its unit keeps working under its old name, with a warning."""

    def test_the_old_name_is_read_and_deprecated_once_at_start_up(self, tmp_path):
        result = start_django(
            tmp_path,
            "from django.conf import settings; print(settings.ENTITLEMENTS_CACHE_TIMEOUT_SECONDS)",
            ENTITLEMENTS_CACHE_TIMEOUT="42",
        )

        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == "42"
        output = result.stdout + result.stderr
        warning = (
            "environment variable ENTITLEMENTS_CACHE_TIMEOUT is deprecated: rename it "
            "ENTITLEMENTS_CACHE_TIMEOUT_SECONDS"
        )
        assert output.count(warning) == 1

    def test_the_new_name_wins_without_a_warning(self, tmp_path):
        result = start_django(
            tmp_path,
            "from django.conf import settings as s; print(s.ENTITLEMENTS_RESYNC_INTERVAL_SECONDS)",
            ENTITLEMENTS_RESYNC_INTERVAL="600",
            ENTITLEMENTS_RESYNC_INTERVAL_SECONDS="900",
        )

        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == "900"
        assert "deprecated" not in result.stdout + result.stderr

    def test_a_bad_value_under_the_old_name_names_the_old_name(self, tmp_path):
        result = start_django(tmp_path, ENTITLEMENTS_SYNC_RETRY_BASE_DELAY="soon")

        assert result.returncode != 0
        assert "ENTITLEMENTS_SYNC_RETRY_BASE_DELAY must be a number" in result.stderr


def test_the_broker_key_prefix_puts_every_task_behind_it(tmp_path):
    """CELERY_BROKER_KEY_PREFIX: another stack (or test run) on the same Redis db never sees
    the tasks, and the queue's depth still reads through the prefix."""
    prefix = f"prefix-test-{uuid.uuid4().hex[:8]}:"
    redis_url = os.environ["REDIS_URL"]
    client = redis.Redis.from_url(redis_url)
    try:
        result = start_django(
            tmp_path,
            "from messages.celery_app import app; "
            "app.send_task('prefix.test.nothing', queue='interactive'); "
            "print(app.connection_for_read().default_channel"
            ".queue_declare('interactive').message_count)",
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=redis_url,
            CELERY_BROKER_KEY_PREFIX=prefix,
        )

        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["1"]
        assert client.llen(f"{prefix}interactive") == 1
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
