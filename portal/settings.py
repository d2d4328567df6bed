"""Ops Portal settings. Configured only by environment variables (see README)."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from portal.lib.env import (
    env_bool,
    env_http_url,
    env_int,
    env_int_list,
    env_list,
    env_path,
    env_secret,
    env_str,
    parse_database_url,
    validate_redis_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("PORTAL_VAR_DIR", BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)


def _secret_key() -> str:
    key = env_secret("SECRET_KEY")
    if key:
        if not DEBUG and len(key) < 50:
            raise ImproperlyConfigured("SECRET_KEY must be at least 50 characters.")
        return key
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required when DEBUG is off.")
    # Debug only: generate once into var/ and reuse, so sessions survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(64))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "portal",
    "pra",
    "incidents",
    "backups",
]

MIDDLEWARE = [
    "portal.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "portal.middleware.RefuseUnstorableURLMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'portal.sqlite3'}"
DATABASES = {"default": parse_database_url(DATABASE_URL)}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # 0 under daphne: Django's ASGI handler runs each request in a thread of its own, so
    # persistent connections are never reused and pile up until "too many clients"
    # (bench/heartbeats.py). RQ workers are single-threaded: `make run` and the README
    # give them DB_CONN_MAX_AGE=60, which saves ~17 ms of connect per job.
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DB_CONN_MAX_AGE", 0, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
else:
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = validate_redis_url(env_str("REDIS_URL") or "redis://127.0.0.1:6379/0")

# Each queue needs a live worker (/health says which has none):
#   control  the periodic ticks and sweeps (backup slots, reapers, escalation): short
#            jobs only, its own worker, so no long job can delay a slot or a reaper
#   pra      remediations and their pre-flights
#   default  notifications, decisions, verifications
#   backups  backups and restores (hours)
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": timeout}
    for name, timeout in (("control", 120), ("pra", 900), ("default", 300), ("backups", 6 * 3600))
}
RQ = {"COMMIT_MODE": "on_db_commit", "WORKER_CLASS": "portal.lib.worker.Worker"}
# Workers heartbeat every RQ_WORKER_TTL - 15 s when idle (rq's own default, 420 s,
# would make an idle worker look dead to /health).
RQ_WORKER_TTL = env_int("RQ_WORKER_TTL", 60, minimum=20)

# Live events: channels-redis on REDIS_URL. Unit tests swap in the in-memory layer.
# channels-redis waits on Redis with a 5 s blocking pop (its `brpop_timeout`), and
# redis-py >= 8 defaults `socket_timeout` to 5 s: left alone, every idle websocket
# dies with "Timeout reading from ..." (channels_redis issue 422). The read timeout
# must exceed the blocking wait; a hung Redis is still noticed within it.
CHANNEL_LAYER_BLOCKING_WAIT = 5
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": CHANNEL_LAYER_BLOCKING_WAIT + 10,
                    "socket_connect_timeout": 5,
                    "socket_keepalive": True,
                    "health_check_interval": 30,
                }
            ],
            "prefix": "portal:live",
        },
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/admin/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE") or "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = env_path("STATIC_ROOT", VAR_DIR / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        # Hashed, compressed files in production (needs collectstatic); plain in debug.
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if env_bool("STATIC_MANIFEST", not DEBUG)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not env_bool("STATIC_MANIFEST", not DEBUG)
if WHITENOISE_USE_FINDERS:
    # Files come from the apps directly; the (empty) root only has to exist.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Security: strict by default when DEBUG is off; TLS terminates at the proxy.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY") else None
)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^metrics$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600, minimum=300)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
# includeSubDomains covers only the portal's own host and its subdomains; preload only
# consents to a preload-list submission (which someone must still make for the domain).
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Audit log: HMAC keys ("id:secret,..."; the first signs, the others verify), never in
# the database; anchors (id, hash, count) appended outside it. See docs/security.md.
AUDIT_HMAC_KEYS = env_secret("AUDIT_HMAC_KEYS")
AUDIT_HMAC_KEY = env_secret("AUDIT_HMAC_KEY")
AUDIT_ANCHOR_DIR = env_path("AUDIT_ANCHOR_DIR", VAR_DIR / "audit-anchors")
AUDIT_ANCHOR_INTERVAL = env_int("AUDIT_ANCHOR_INTERVAL", 300, minimum=30, maximum=86400)

# /metrics: reachable with a bearer token, or from these client addresses.
METRICS_TOKEN = env_secret("METRICS_TOKEN")
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])
# A worker counts as alive when its heartbeat is fresher than this.
WORKER_HEARTBEAT_MAX_AGE = env_int("WORKER_HEARTBEAT_MAX_AGE", 120, minimum=10)

LOG_LEVEL = (env_str("LOG_LEVEL") or "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} is not a logging level.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- Remediation (pra) ---------------------------------------------------------
# Private keys come from files only (never the database). The target's
# authorized_keys forces pra-exec for the first and pra-diag for the second.
PRA_SSH_KEY_FILE = env_path("PRA_SSH_KEY_FILE", VAR_DIR / "ssh" / "pra_exec_ed25519")
PRA_DIAG_SSH_KEY_FILE = env_path("PRA_DIAG_SSH_KEY_FILE", VAR_DIR / "ssh" / "pra_diag_ed25519")
PRA_CONNECT_TIMEOUT = env_int("PRA_CONNECT_TIMEOUT", 10, minimum=1, maximum=120)
PRA_CONNECT_ATTEMPTS = env_int("PRA_CONNECT_ATTEMPTS", 3, minimum=1, maximum=10)
PRA_RETRY_BACKOFF = env_int("PRA_RETRY_BACKOFF_MS", 1000, minimum=0, maximum=60000) / 1000
PRA_PROPOSAL_TTL = env_int("PRA_PROPOSAL_TTL", 24 * 3600, minimum=60)
PRA_HEARTBEAT_GRACE = env_int("PRA_HEARTBEAT_GRACE", 60, minimum=5)
PRA_MAX_OUTPUT = env_int("PRA_MAX_OUTPUT", 64 * 1024, minimum=1024, maximum=16 * 1024 * 1024)
# Seconds a read-only command (diagnostic, probe, pre-flight dry run) may take on a target.
PRA_DIAG_TIMEOUT = env_int("PRA_DIAG_TIMEOUT", 60, minimum=5, maximum=3600)
PRA_VERIFY_ATTEMPTS = env_int("PRA_VERIFY_ATTEMPTS", 3, minimum=1, maximum=20)
PRA_PREFLIGHT = env_bool("PRA_PREFLIGHT", True)
PRA_PREFLIGHT_TIMEOUT = env_int("PRA_PREFLIGHT_TIMEOUT", 120, minimum=10)
PRA_CONNECTIVITY_PORTS = tuple(
    env_int_list("PRA_CONNECTIVITY_PORTS", [22, 53, 80, 443], minimum=1, maximum=65535)
)
# AI (MCP) identities may ask for LOW-impact auto-approval only if this is on.
PRA_AI_AUTO_APPROVE = env_bool("PRA_AI_AUTO_APPROVE", False)
# Impact levels whose actions only run inside a maintenance window (e.g. "HIGH"), and how
# far ahead an approval may look for one (an approval with no window that soon is refused).
PRA_WINDOW_IMPACTS = tuple(impact.upper() for impact in env_list("PRA_WINDOW_IMPACTS", []))
PRA_WINDOW_MAX_WAIT = env_int("PRA_WINDOW_MAX_WAIT_DAYS", 15, minimum=1, maximum=366) * 86400

# --- Incidents -----------------------------------------------------------------------
HEARTBEAT_MAX_BYTES = env_int("HEARTBEAT_MAX_BYTES", 16 * 1024, minimum=1024, maximum=1024 * 1024)
HEARTBEAT_MAX_SKEW = env_int("HEARTBEAT_MAX_SKEW", 300, minimum=30, maximum=3600)
HEARTBEAT_RETENTION_HOURS = env_int("HEARTBEAT_RETENTION_HOURS", 24, minimum=1)
DECIDER_URL = env_http_url("DECIDER_URL")
DECIDER_TIMEOUT = env_int("DECIDER_TIMEOUT_MS", 2000, minimum=100, maximum=30000) / 1000
STAGING_RUNNER_URL = env_http_url("STAGING_RUNNER_URL")
STAGING_TIMEOUT = env_int("STAGING_TIMEOUT", 60, minimum=1, maximum=3600)
AUTOPATCH_HEALTH_WINDOW = env_int("AUTOPATCH_HEALTH_WINDOW", 90, minimum=2, maximum=3600)
AUTOPATCH_APPROVAL_TTL = env_int("AUTOPATCH_APPROVAL_TTL", 3600, minimum=60, maximum=7 * 86400)
ESCALATION_DELAY_MINUTES = env_int("ESCALATION_DELAY_MINUTES", 10, minimum=1)
# Storms (incidents.models.GroupingRule): a group's digests at most this often (seconds).
INCIDENT_DIGEST_INTERVAL = env_int("INCIDENT_DIGEST_INTERVAL", 300, minimum=30, maximum=86400)
# No page of its own for an agent whose host agent or declared upstream agent is down.
INCIDENT_SUPPRESS_DEPENDENTS = env_bool("INCIDENT_SUPPRESS_DEPENDENTS", True)
# Agents per transaction in the missed-heartbeat sweep.
INCIDENT_SWEEP_BATCH = env_int("INCIDENT_SWEEP_BATCH", 1000, minimum=10, maximum=10000)
# The lean heartbeat path (incidents.fastpath): quiet heartbeats written in batches.
HEARTBEAT_FAST_PATH = env_bool("HEARTBEAT_FAST_PATH", True)
HEARTBEAT_BATCH_MAX = env_int("HEARTBEAT_BATCH_MAX", 200, minimum=1, maximum=5000)
HEARTBEAT_BATCH_WAIT_MS = env_int("HEARTBEAT_BATCH_WAIT_MS", 2, minimum=0, maximum=1000)

# --- Notifications -------------------------------------------------------------------
# Email channels send through Django's mail (SMTP by default). Webhook URLs that are
# secrets live in environment variables named by each channel, never in settings.
EMAIL_BACKEND = env_str("EMAIL_BACKEND") or "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = env_str("EMAIL_HOST") or "localhost"
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("Set EMAIL_USE_TLS or EMAIL_USE_SSL, not both.")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1, maximum=120)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL") or "ops-portal@localhost"
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Makes links in notifications absolute (e.g. https://ops.example.com).
PORTAL_BASE_URL = env_http_url("PORTAL_BASE_URL").rstrip("/")

# --- Backups -------------------------------------------------------------------
# Where backup files go (one directory per source). Sources name their
# password's env var or file; nothing secret is stored in the database.
BACKUP_STORAGE_DIR = env_path("BACKUP_STORAGE_DIR", VAR_DIR / "backups")
BACKUP_RETENTION_DAYS = env_int("BACKUP_RETENTION_DAYS", 7, minimum=1, maximum=3650)
BACKUP_DISK_ALERT_PERCENT = env_int("BACKUP_DISK_ALERT_PERCENT", 75, minimum=1, maximum=100)
BACKUP_DISK_WATCH_PATHS = env_list("BACKUP_DISK_WATCH_PATHS", [str(BACKUP_STORAGE_DIR)])
BACKUP_ZSTD_LEVEL = env_int("BACKUP_ZSTD_LEVEL", 3, minimum=1, maximum=19)
BACKUP_ZSTD_THREADS = env_int("BACKUP_ZSTD_THREADS", 0, minimum=0, maximum=64)
BACKUP_FRESH_HOURS = env_int("BACKUP_FRESH_HOURS", 26, minimum=1)
BACKUP_SHRINK_ALERT_PERCENT = env_int("BACKUP_SHRINK_ALERT_PERCENT", 50, minimum=1, maximum=99)
BACKUP_STDERR_MAX = env_int("BACKUP_STDERR_MAX", 16 * 1024, minimum=1024, maximum=1024 * 1024)
BACKUP_HEARTBEAT_GRACE = env_int("BACKUP_HEARTBEAT_GRACE", 120, minimum=10)
BACKUP_PROGRESS_INTERVAL = env_int("BACKUP_PROGRESS_INTERVAL_MS", 500, minimum=50) / 1000
# Nothing a backup or restore tool does may hang: connect, lock and stall bounds.
BACKUP_CONNECT_TIMEOUT = env_int("BACKUP_CONNECT_TIMEOUT", 10, minimum=1)
BACKUP_KUBECTL_TIMEOUT = env_int("BACKUP_KUBECTL_TIMEOUT", 60, minimum=1)
BACKUP_LOCK_TIMEOUT = env_int("BACKUP_LOCK_TIMEOUT", 30, minimum=1)
BACKUP_STALL_TIMEOUT = env_int("BACKUP_STALL_TIMEOUT", 300, minimum=1)
BACKUP_MISSED_AFTER = env_int("BACKUP_MISSED_AFTER", 900, minimum=1)
BACKUP_RESTORE_PLAN_TTL = env_int("BACKUP_RESTORE_PLAN_TTL", 24 * 3600, minimum=300)
# A backup needs free space for the last stored size × this (percent) or fails at once; 0: off.
BACKUP_SPACE_MARGIN_PERCENT = env_int("BACKUP_SPACE_MARGIN_PERCENT", 150, minimum=0, maximum=1000)
# Where backups are stored: "local" (BACKUP_STORAGE_DIR) or "s3" (an S3-compatible bucket).
BACKUP_STORAGE = env_str("BACKUP_STORAGE", "local")
BACKUP_S3_ENDPOINT = env_http_url("BACKUP_S3_ENDPOINT")
BACKUP_S3_BUCKET = env_str("BACKUP_S3_BUCKET", "")
BACKUP_S3_PREFIX = env_str("BACKUP_S3_PREFIX", "")
BACKUP_S3_REGION = env_str("BACKUP_S3_REGION", "us-east-1")
BACKUP_S3_ACCESS_KEY_ID = env_secret("BACKUP_S3_ACCESS_KEY_ID", "")
BACKUP_S3_SECRET_ACCESS_KEY = env_secret("BACKUP_S3_SECRET_ACCESS_KEY", "")
BACKUP_S3_PART_MB = env_int("BACKUP_S3_PART_MB", 8, minimum=5, maximum=512)
# A second copy of every backup, in the S3 bucket above, while the primary is local ("s3").
BACKUP_COPY_TO = env_str("BACKUP_COPY_TO", "")
# Restore credentials given as files must live under this directory (realpath-checked).
BACKUP_SECRETS_DIR = env_path("BACKUP_SECRETS_DIR", VAR_DIR / "secrets")
# Encryption at rest (AES-256-GCM): "id:base64key,..." (32-byte keys; the first encrypts,
# all decrypt), or BACKUP_ENCRYPTION_KEYS_FILE. On by default unless DEBUG (backups.E002).
BACKUP_ENCRYPTION = env_bool("BACKUP_ENCRYPTION", not DEBUG)
BACKUP_ENCRYPTION_KEYS = env_secret("BACKUP_ENCRYPTION_KEYS", "")
# Restore drills: RTO targets per kind (seconds; a source may set its own), the full
# verification's target, and how recent a good drill keeps a source with drills "fresh".
BACKUP_RTO_TARGETS = {
    "postgres": env_int("BACKUP_RTO_POSTGRES", 900, minimum=1),
    "redis": env_int("BACKUP_RTO_REDIS", 300, minimum=1),
    # The restore-procedures runbook's targets (seed 003): a Terraform state in 2 min,
    # a VM/LXC from vzdump in 5 min.
    "terraform": env_int("BACKUP_RTO_TERRAFORM", 120, minimum=1),
    "proxmox": env_int("BACKUP_RTO_PROXMOX", 300, minimum=1),
}
BACKUP_VERIFY_TARGET = env_int("BACKUP_VERIFY_TARGET", 300, minimum=1)
BACKUP_DRILL_FRESH_DAYS = env_int("BACKUP_DRILL_FRESH_DAYS", 8, minimum=1)
BACKUP_DRILL_SAMPLE_TABLES = env_int("BACKUP_DRILL_SAMPLE_TABLES", 3, minimum=0, maximum=50)
