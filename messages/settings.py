"""Django settings, read entirely from environment variables (see docs/operations.md)."""

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from messages.env import (
    env_bool,
    env_float,
    env_int,
    env_json,
    env_list,
    env_str,
    env_url,
    renamed,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# Where the embedded default keeps its SQLite file, broker folders, cache and secret key.
DATA_DIR = Path(env_str("DATA_DIR", str(BASE_DIR / "data"))).resolve()

DEBUG = env_bool("DJANGO_DEBUG", False)


def _secret_key() -> str:
    """Use DJANGO_SECRET_KEY, or a random key kept in DATA_DIR so a single machine needs none."""
    key = env_str("DJANGO_SECRET_KEY")
    if key:
        return key
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# HTTPS (docs/operations.md, "HTTPS"). Production serves through a TLS proxy that sets
# X-Forwarded-Proto; only DJANGO_BEHIND_TLS_PROXY makes Django trust that header, and only then
# can it tell a plain request from a proxied HTTPS one, so the redirect follows that switch (on
# its own it would loop behind the proxy). Secure cookies and HSTS are on whenever debug is off:
# browsers ignore HSTS on plain HTTP, and `make run`'s demo env turns the cookies' flag off.
_BEHIND_TLS_PROXY = env_bool("DJANGO_BEHIND_TLS_PROXY", False)
if _BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", _BEHIND_TLS_PROXY)
# The load balancer's health check speaks plain HTTP to the container.
SECURE_REDIRECT_EXEMPT = [r"^healthz/?$", r"^metrics/?$"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
SECURE_HSTS_SECONDS = env_int(
    "DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600, minimum=0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
# Only the header's flag: joining the browsers' preload list is a separate, manual submission.
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", not DEBUG)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "mozilla_django_oidc",
    "django_celery_beat",
    "django_celery_results",
    "core",
    "worker",
]

MIDDLEWARE = [
    # First: a probe answers whatever Host it sends and never opens a session (core/health.py).
    "core.health.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Filter values are input: a NUL would reach PostgreSQL and fail there (core/query_guard.py).
    "core.query_guard.refuse_nul_in_address",
    # Static files from STATIC_ROOT (filled by `collectstatic`) by every web process.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "messages.urls"
WSGI_APPLICATION = "messages.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------

_DEFAULT_DATABASE_URL = f"sqlite:///{DATA_DIR / 'db.sqlite3'}"
_database_url = env_url(
    "DATABASE_URL",
    _DEFAULT_DATABASE_URL,
    schemes={"sqlite", "postgres", "postgresql", "pgsql"},
)
try:
    _database = dj_database_url.parse(
        _database_url,
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60, minimum=0),
        # A kept connection is checked before it is reused (requests, and tasks: worker/apps.py).
        conn_health_checks=True,
    )
except ValueError as error:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {error}") from None
if _database["ENGINE"] == "django.db.backends.sqlite3":
    if _database["NAME"] != ":memory:":
        Path(_database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets web, worker and beat share the file; IMMEDIATE avoids lock-upgrade deadlocks.
    _database["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    _database["CONN_MAX_AGE"] = 0
DATABASES = {"default": _database}
# A login's UPDATE (core/compiled_updates.py) runs as a statement prepared once per PostgreSQL
# session, which then skips its parse and plan. Safe behind PgBouncer in any pooling mode (a
# session without it prepares it in the same query); off, the statement is sent whole each time.
DB_PREPARED_UPDATES = env_bool("DB_PREPARED_UPDATES", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "core.User"

# --- Redis, cache -----------------------------------------------------------------------------

REDIS_URL = env_url("REDIS_URL", "", schemes={"redis", "rediss", "unix"})
CACHE_KEY_PREFIX = env_str("CACHE_KEY_PREFIX", "messages")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "SOCKET_CONNECT_TIMEOUT": 2,
                "SOCKET_TIMEOUT": 2,
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(DATA_DIR / "cache"),
            "KEY_PREFIX": CACHE_KEY_PREFIX,
        }
    }

SESSION_ENGINE = "django.contrib.sessions.backends.db"

# --- Auth, OIDC -----------------------------------------------------------------------------

AUTHENTICATION_BACKENDS = [
    "core.authentication.OIDCAuthenticationBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "/admin/login/"
LOGIN_REDIRECT_URL = env_str("LOGIN_REDIRECT_URL", "/")
LOGOUT_REDIRECT_URL = env_str("LOGOUT_REDIRECT_URL", "/")

OIDC_RP_CLIENT_ID = env_str("OIDC_RP_CLIENT_ID")
OIDC_RP_CLIENT_SECRET = env_str("OIDC_RP_CLIENT_SECRET")
OIDC_RP_SIGN_ALGO = env_str("OIDC_RP_SIGN_ALGO", "RS256")
OIDC_RP_SCOPES = env_str("OIDC_RP_SCOPES", "openid email")
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("OIDC_OP_AUTHORIZATION_ENDPOINT")
OIDC_OP_TOKEN_ENDPOINT = env_str("OIDC_OP_TOKEN_ENDPOINT")
OIDC_OP_USER_ENDPOINT = env_str("OIDC_OP_USER_ENDPOINT")
OIDC_OP_JWKS_ENDPOINT = env_str("OIDC_OP_JWKS_ENDPOINT")
OIDC_OP_LOGOUT_ENDPOINT = env_str("OIDC_OP_LOGOUT_ENDPOINT")
OIDC_VERIFY_SSL = env_bool("OIDC_VERIFY_SSL", True)
OIDC_TIMEOUT = env_float("OIDC_TIMEOUT", 5.0, minimum=0.1)
OIDC_CREATE_USER = env_bool("OIDC_CREATE_USER", True)
OIDC_AUTH_REQUEST_EXTRA_PARAMS = env_json("OIDC_AUTH_REQUEST_EXTRA_PARAMS", {}, expect=dict)
OIDC_USE_NONCE = env_bool("OIDC_USE_NONCE", True)
# Off: a login whose e-mail belongs to a local user without a `sub` is refused. On: that user
# is adopted (their `sub` set); whoever controls the e-mail at the provider gets the account.
OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION = env_bool(
    "OIDC_FALLBACK_TO_EMAIL_FOR_IDENTIFICATION", False
)
# The access token is never kept: the sync only needs the forwarded claims, stored at login.
# The id token stays in the (server-side) session for one use: the hint of the provider's
# end-session call when the user logs out (RP-initiated logout, OIDC_OP_LOGOUT_ENDPOINT).
OIDC_STORE_ACCESS_TOKEN = False
OIDC_STORE_ID_TOKEN = True
OIDC_OP_LOGOUT_URL_METHOD = "core.authentication.provider_logout_url"
OIDC_USERINFO_FULLNAME_FIELDS = env_list(
    "OIDC_USERINFO_FULLNAME_FIELDS", ["given_name", "usual_name"]
)

# --- REST API -------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["core.api.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.api.exceptions.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "La Suite Messages entitlements worker API",
    "DESCRIPTION": "Mail domains, their admin accesses, provisioning and feature flags.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a Status; name the exposed one so later ones cannot collide with it.
    "ENUM_NAME_OVERRIDES": {"SyncStatusEnum": "core.models.EntitlementSyncState.Status"},
}

# --- Product settings -----------------------------------------------------------------------

FEATURE_MAILDOMAIN_CREATE = env_bool("FEATURE_MAILDOMAIN_CREATE", True)
FEATURE_MAILDOMAIN_MANAGE_ACCESSES = env_bool("FEATURE_MAILDOMAIN_MANAGE_ACCESSES", True)

PROVISIONING_API_KEY = env_str("PROVISIONING_API_KEY")
PROVISIONING_MAX_DOMAINS = env_int("PROVISIONING_MAX_DOMAINS", 1000, minimum=1)
# custom_attributes bounds: every stored value must render in the admin (a 900-deep one did not).
PROVISIONING_CUSTOM_ATTRIBUTES_MAX_DEPTH = env_int(
    "PROVISIONING_CUSTOM_ATTRIBUTES_MAX_DEPTH", 10, minimum=1
)
PROVISIONING_CUSTOM_ATTRIBUTES_MAX_BYTES = env_int(
    "PROVISIONING_CUSTOM_ATTRIBUTES_MAX_BYTES", 64 * 1024, minimum=2
)

ENTITLEMENTS_BACKEND = env_str(
    "ENTITLEMENTS_BACKEND", "core.entitlements.backends.local.LocalEntitlementsBackend"
)
ENTITLEMENTS_BACKEND_PARAMETERS = env_json("ENTITLEMENTS_BACKEND_PARAMETERS", {}, expect=dict)
# Fresh window: the upstream is not asked again for this long unless a refresh is forced.
ENTITLEMENTS_CACHE_TIMEOUT_SECONDS = env_int(
    renamed("ENTITLEMENTS_CACHE_TIMEOUT_SECONDS", old="ENTITLEMENTS_CACHE_TIMEOUT"), 300, minimum=0
)
# Stale window: how long the last good answer may stand in while the upstream is unavailable.
ENTITLEMENTS_STALE_FALLBACK_SECONDS = env_int(
    "ENTITLEMENTS_STALE_FALLBACK_SECONDS", 6 * 3600, minimum=0
)
# Strict mode: the sync owns every ADMIN row, hand-made ones included (the seed product's rule).
ENTITLEMENTS_STRICT_MODE = env_bool("ENTITLEMENTS_STRICT_MODE", False)
ENTITLEMENTS_RESYNC_INTERVAL_SECONDS = env_int(
    renamed("ENTITLEMENTS_RESYNC_INTERVAL_SECONDS", old="ENTITLEMENTS_RESYNC_INTERVAL"),
    3600,
    minimum=60,
)
# Requests for the same user inside this window collapse into one queued task.
ENTITLEMENTS_SYNC_DEDUP_SECONDS = env_int("ENTITLEMENTS_SYNC_DEDUP_SECONDS", 10, minimum=0)
ENTITLEMENTS_SYNC_MAX_RETRIES = env_int("ENTITLEMENTS_SYNC_MAX_RETRIES", 5, minimum=0)
# Retry delays: full jitter under an exponential ceiling, base * 2**retries, capped.
ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS = env_float(
    renamed("ENTITLEMENTS_SYNC_RETRY_BASE_DELAY_SECONDS", old="ENTITLEMENTS_SYNC_RETRY_BASE_DELAY"),
    2.0,
    minimum=0.1,
)
ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS = env_float(
    renamed("ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS", old="ENTITLEMENTS_SYNC_RETRY_MAX_DELAY"),
    120.0,
    minimum=1.0,
)
# A recorded request not picked up by a worker after this long is enqueued again by the sweep.
ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS = env_int(
    "ENTITLEMENTS_SYNC_SWEEP_GRACE_SECONDS", 120, minimum=10
)
# Full resync fan-out: users per bulk message, and upstream calls in flight per message.
ENTITLEMENTS_SYNC_BATCH_SIZE = env_int("ENTITLEMENTS_SYNC_BATCH_SIZE", 100, minimum=1)
ENTITLEMENTS_SYNC_BATCH_CONCURRENCY = env_int("ENTITLEMENTS_SYNC_BATCH_CONCURRENCY", 8, minimum=1)
# Revocation budget (docs/reliability.md): one resync run may revoke at most this share of
# the accesses the sync could revoke when it started, and always at least the floor, so a small
# deployment can still revoke a few; past that its revocations are held for an operator.
# 10 %: an hourly run's real revocations are well under 1 %, while an upstream answering empty
# lists for everyone would revoke 100 %.
ENTITLEMENTS_MAX_REVOKE_SHARE = env_float("ENTITLEMENTS_MAX_REVOKE_SHARE", 0.1, minimum=0.0)
if ENTITLEMENTS_MAX_REVOKE_SHARE > 1:
    raise ImproperlyConfigured(
        "ENTITLEMENTS_MAX_REVOKE_SHARE must be between 0 and 1, "
        f"got {ENTITLEMENTS_MAX_REVOKE_SHARE}"
    )
ENTITLEMENTS_MAX_REVOKE_MIN = env_int("ENTITLEMENTS_MAX_REVOKE_MIN", 10, minimum=0)
# Ended subscriptions (core/entitlements/access_ended.py): how long DeployCenter must keep
# answering not_activated before a run revokes the user's sync-made accesses. A day rides out
# an upstream mistake or a renewal late by a few hours; 0 never revokes for it.
ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS = env_int(
    "ENTITLEMENTS_ACCESS_ENDED_CONFIRMATION_SECONDS", 24 * 3600, minimum=0
)

# Change signals (DeployCenter's webhooks, docs/entitlements.md). The endpoint is off (404)
# until at least one token is set; several, comma-separated, let a token be rotated.
ENTITLEMENTS_CHANGES_TOKEN = tuple(env_list("ENTITLEMENTS_CHANGES_TOKEN", []))
for _token in ENTITLEMENTS_CHANGES_TOKEN:
    # Sent in a header by DeployCenter: printable ASCII without spaces, and long enough that
    # guessing it is hopeless.
    if len(_token) < 16 or not all("!" <= character <= "~" for character in _token):
        raise ImproperlyConfigured(
            "ENTITLEMENTS_CHANGES_TOKEN: each comma-separated token must be at least 16 "
            "printable ASCII characters without spaces (e.g. `openssl rand -hex 32`)"
        )
# DeployCenter sends its webhook before it commits the change: a signal's sync asks after this
# settle delay, and once more this much later when that answer changed nothing.
ENTITLEMENTS_CHANGE_SETTLE_SECONDS = env_float(
    "ENTITLEMENTS_CHANGE_SETTLE_SECONDS", 2.0, minimum=0.0
)
ENTITLEMENTS_CHANGE_RECHECK_SECONDS = env_float(
    "ENTITLEMENTS_CHANGE_RECHECK_SECONDS", 20.0, minimum=1.0
)
if ENTITLEMENTS_CHANGE_SETTLE_SECONDS + ENTITLEMENTS_CHANGE_RECHECK_SECONDS >= (
    ENTITLEMENTS_RESYNC_INTERVAL_SECONDS
):
    raise ImproperlyConfigured(
        "ENTITLEMENTS_CHANGE_SETTLE_SECONDS plus ENTITLEMENTS_CHANGE_RECHECK_SECONDS must stay "
        f"under ENTITLEMENTS_RESYNC_INTERVAL_SECONDS ({ENTITLEMENTS_RESYNC_INTERVAL_SECONDS}), got "
        f"{ENTITLEMENTS_CHANGE_SETTLE_SECONDS:g} + {ENTITLEMENTS_CHANGE_RECHECK_SECONDS:g}"
    )

# Upstream protection (core/entitlements/upstream_guard.py, docs/reliability.md). The rate limit
# is one paced schedule shared through Redis by every worker on every machine: bulk calls go
# out evenly spaced at this rate, never in a burst; 0 turns it off.
# 50 calls/s lets an hourly full run cover ~180,000 users while staying a light load for one
# Django service behind DeployCenter; raise it once the upstream's capacity is known.
ENTITLEMENTS_RATE_LIMIT_PER_SECOND = env_float(
    "ENTITLEMENTS_RATE_LIMIT_PER_SECOND", 50.0, minimum=0.0
)
# How many intervals the schedule may run ahead of now: logins may go at once up to this many;
# one second of traffic by default. Bulk calls never go ahead of the schedule.
ENTITLEMENTS_RATE_LIMIT_BURST = env_int("ENTITLEMENTS_RATE_LIMIT_BURST", 50, minimum=1)
# Share of the burst a full run may not book ahead: left to login (interactive) syncs, so they
# never wait behind a run's booked slots.
ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE = env_float(
    "ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE", 0.2, minimum=0.0
)
if ENTITLEMENTS_RATE_LIMIT_BURST * (1 - ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE) < 1:
    raise ImproperlyConfigured(
        "ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE must leave at least one token of "
        f"ENTITLEMENTS_RATE_LIMIT_BURST ({ENTITLEMENTS_RATE_LIMIT_BURST}) to bulk syncs, got "
        f"{ENTITLEMENTS_RATE_LIMIT_INTERACTIVE_RESERVE}"
    )
# The circuit opens after this many transient failures in a row within the window, refuses
# calls for the cool-down, then lets one probe call through.
ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD = env_int(
    "ENTITLEMENTS_CIRCUIT_FAILURE_THRESHOLD", 5, minimum=1
)
ENTITLEMENTS_CIRCUIT_WINDOW_SECONDS = env_float(
    "ENTITLEMENTS_CIRCUIT_WINDOW_SECONDS", 60.0, minimum=0.1
)
ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS = env_float(
    "ENTITLEMENTS_CIRCUIT_COOLDOWN_SECONDS", 30.0, minimum=0.1
)

# --- Celery -----------------------------------------------------------------------------------

# Tasks (and their retry countdowns) must end well inside this, or Redis redelivers them while
# the first copy still runs.
_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 1800, minimum=60)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300, minimum=10)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 5
if CELERY_TASK_TIME_LIMIT * 2 > _VISIBILITY_TIMEOUT:
    raise ImproperlyConfigured(
        "CELERY_VISIBILITY_TIMEOUT must be at least twice CELERY_TASK_TIME_LIMIT "
        f"({_VISIBILITY_TIMEOUT} < 2 x {CELERY_TASK_TIME_LIMIT})"
    )
# A retry waiting for its countdown is an unacked message on Redis: past the visibility
# timeout it would be delivered a second time.
if ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS + CELERY_TASK_TIME_LIMIT > _VISIBILITY_TIMEOUT / 2:
    raise ImproperlyConfigured(
        "ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS plus CELERY_TASK_TIME_LIMIT must stay under "
        f"half of CELERY_VISIBILITY_TIMEOUT ({ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS:g} + "
        f"{CELERY_TASK_TIME_LIMIT} > {_VISIBILITY_TIMEOUT} / 2)"
    )

# A running resync with no batch reporting for this long lost its tasks (e.g. a broker that
# restarted without its data): it is closed as failed/incomplete so the next run goes ahead.
# Longer than any silence of a live run: a batch reports before each retry and at its end.
ENTITLEMENTS_RUN_STALL_SECONDS = env_int("ENTITLEMENTS_RUN_STALL_SECONDS", 600, minimum=30)
if (
    ENTITLEMENTS_RUN_STALL_SECONDS
    <= CELERY_TASK_TIME_LIMIT + ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS
):
    raise ImproperlyConfigured(
        "ENTITLEMENTS_RUN_STALL_SECONDS must be longer than CELERY_TASK_TIME_LIMIT plus "
        f"ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS ({ENTITLEMENTS_RUN_STALL_SECONDS} <= "
        f"{CELERY_TASK_TIME_LIMIT} + {ENTITLEMENTS_SYNC_RETRY_MAX_DELAY_SECONDS:g})"
    )

_BROKER_SCHEMES = {"redis", "rediss", "amqp", "amqps", "pyamqp", "filesystem", "memory"}
CELERY_BROKER_URL = env_url(
    # "localhost" only silences kombu's "no hostname" warning: the folders below are the broker.
    "CELERY_BROKER_URL",
    REDIS_URL or "filesystem://localhost//",
    schemes=_BROKER_SCHEMES,
)
_broker_scheme = urlsplit(CELERY_BROKER_URL).scheme
if _broker_scheme == "filesystem":
    # Embedded default: one folder for in and out, plus a control folder for events (Flower).
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    # kombu's own file-system transport can corrupt its control files when several processes
    # start at once; this subclass writes every file whole (messages/embedded_broker.py).
    CELERY_BROKER_TRANSPORT = "messages.embedded_broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "polling_interval": 0.2,
    }
elif _broker_scheme in {"redis", "rediss"}:
    # kombu's Redis transport, made to survive a broker restart (messages/redis_broker.py).
    CELERY_BROKER_TRANSPORT = "messages.redis_broker:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": _VISIBILITY_TIMEOUT,
        # Bring back the messages of a dead worker soon after the visibility timeout.
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
        "retry_on_timeout": True,
    }
    # Prefix of every broker key (queues, unacked messages, bindings), so several deployments
    # or test runs can share one Redis db without seeing each other's tasks.
    _broker_key_prefix = env_str("CELERY_BROKER_KEY_PREFIX")
    if _broker_key_prefix:
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = _broker_key_prefix
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
# A producer must not hang when the broker is down: login records the request and moves on.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "django-db")
CELERY_RESULT_EXTENDED = True
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES", 7 * 24 * 3600, minimum=60)
CELERY_CACHE_BACKEND = "django-cache"

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True

# At-least-once delivery: a task killed mid-way runs again, so every task is idempotent.
CELERY_TASK_ACKS_LATE = True
# Celery's Django fix-up closes every database connection before and after each task unless
# this is set: reopening one (a new PostgreSQL backend process, Django's set-up) cost more
# CPU than a login's whole sync (docs/performance.md). Connections are recycled instead as
# Django does around requests, by DB_CONN_MAX_AGE and a health check (worker/apps.py); the
# fix-up still closes them every 2 x this many tasks.
CELERY_DB_REUSE_MAX = 10_000
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A late-ack task whose broker connection dropped will be delivered again: stop this copy
# rather than run two (Celery 6's default). An unserved login request is re-sent by the sweep.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "interactive"
# Login syncs on "interactive", full and per-domain resyncs on "bulk" (worker/queues.py).
CELERY_TASK_ROUTES = ("worker.queues.route_task",)
# Celery's own defaults, written out because Celery reads them at every publish (each login's):
# a setting Django does not define is looked for under each of its names, an exception per
# miss, before its default is found: ~20 us a lookup against ~6, four lookups per publish
# (docs/performance.md, figure 15l).
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_REPR_MAXLEVELS = 3
CELERY_BROKER_POOL_ACQUIRE_TIMEOUT = None

# Flower shows every task with its state, arguments and result.
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_TRACK_STARTED = True

CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Flower's basic auth, user:password[,user:password]; `manage.py run_flower` refuses to start
# without it outside debug.
FLOWER_BASIC_AUTH = env_str("FLOWER_BASIC_AUTH")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Sentry ---------------------------------------------------------------------------------

SENTRY_DSN = env_url("SENTRY_DSN", "", schemes={"http", "https"})
if SENTRY_DSN:
    from messages.sentry import init_sentry

    # Scrubbed of secrets and personal data (messages/sentry.py, docs/operations.md).
    init_sentry(
        dsn=SENTRY_DSN,
        environment=env_str("SENTRY_ENVIRONMENT", "production"),
        traces_sample_rate=env_float("SENTRY_TRACES_SAMPLE_RATE", 0.0, minimum=0.0),
    )
    # Events carry the signed-in user's id, never their e-mail.
    MIDDLEWARE.append("messages.sentry.user_id_middleware")

# GET /metrics (core/metrics.py): the bearer token Prometheus sends; the directory where every
# process adds up its counts (prometheus-client reads the variable too; docs/operations.md).
METRICS_TOKEN = env_str("METRICS_TOKEN")
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR")

# --- Misc -----------------------------------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Times to the second with their zone (messages/formats/en/formats.py).
FORMAT_MODULE_PATH = ["messages.formats"]
STATIC_URL = "static/"
# Filled by `manage.py collectstatic` (`make run`, the Docker image build), served by WhiteNoise.
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT") or DATA_DIR / "static").resolve()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed, compressed copies: browsers cache them for good, a deploy changes their names.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL must be a logging level name, got {LOG_LEVEL!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # At DEBUG urllib3 logs every request line, and the entitlements request carries the
        # user's email and claims in its query string: never below INFO, whatever LOG_LEVEL.
        "urllib3": {"level": "INFO"},
    },
}
