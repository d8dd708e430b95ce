"""Django settings shared by every service; each value comes from the environment.

Local defaults work out of the box (Postgres and RabbitMQ on 127.0.0.1 with their stock users).
With DJANGO_DEBUG off, DJANGO_SECRET_KEY is required: there is no insecure default in production.
See .env.example for every variable.
"""

from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from core.db import postgres_database
from core.env import env_bool, env_durations, env_int, env_list, env_rate, env_str
from core.logging import configure_structlog, logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "insecure-local-development-key" if DEBUG else None)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# The base of every process's app list: the scheduler's tables. The migrations of most apps
# (accounts, outbox, deliveries, webhooks, the read model) schedule their retention jobs in them,
# so a process that installs one of those needs django_q in its migration graph (manage.py check,
# runserver). Each process's settings add what it serves or queries through the ORM, and no other
# service's apps; deployment/settings.py, for migrations and the scheduler, installs them all.
INSTALLED_APPS = ["django_q"]

# The command API's request pipeline (sessions for the admin, logins throttled by axes); the query
# API, with neither, runs a shorter one.
MIDDLEWARE = [
    "core.http_metrics.RequestMetricsMiddleware",  # first: it counts every answer, refusals included
    "core.middleware.CorrelationIdMiddleware",
    # Before anything reads the Host: the probes' is the pod's IP, never an allowed host.
    "core.middleware.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: it answers a locked-out login (the admin's too)
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses a locked-out client first
    "django.contrib.auth.backends.ModelBackend",
]

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

DATABASES = {
    "default": {
        **postgres_database(),
        # Persistent connections: a request must not pay for a new connection.
        "CONN_MAX_AGE": env_int("POSTGRES_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The statements every request or message runs are planned once per session (core/prepared.py);
# false behind a pooler in transaction mode.
POSTGRES_PREPARED_STATEMENTS = env_bool("POSTGRES_PREPARED_STATEMENTS", True)

# Shared by every process (login throttling must count across gunicorn workers and pods).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "django_cache",
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env_str("STATIC_ROOT", str(BASE_DIR / "var" / "static"))
# Serve the admin's and the API docs' assets straight from the installed apps, no collectstatic needed.
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    # A service client's API key first: it tells a key by its shape, without a query, and leaves
    # everything else to the user tokens' class.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.accounts.auth.ApiKeyAuthentication",
        "core.accounts.auth.TokenAuthentication",
    ],
    # Each API key's own limit; a user token passes it without a query.
    "DEFAULT_THROTTLE_CLASSES": ["core.accounts.throttling.ApiKeyRateThrottle"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": env_int("API_PAGE_SIZE", 50),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # JSON only: every client of the API sends JSON, and form and multipart bodies (files spooled
    # to disk, any charset a client names) would only widen what bad input can reach.
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Email delivery platform",
    "DESCRIPTION": "Send templated emails to many recipients; follow each recipient's status.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.openapi.add_error_responses",
    ],
}

REST_KNOX = {
    "TOKEN_TTL": timedelta(seconds=env_int("AUTH_TOKEN_TTL_SECONDS", 7 * 24 * 3600)),
    "AUTH_HEADER_PREFIX": "Token",
    "AUTO_REFRESH": False,
}

# Login throttling (django-axes, counting in Postgres): this many failures for one (client
# address, email), each within the window of the one before, answer 429 until the window has
# passed since the last; the API's login and the admin's alike. A success clears the count.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("LOGIN_FAILURE_WINDOW_SECONDS", 15 * 60)
AXES_FAILURE_LIMIT = "core.accounts.services.login_failure_limit"  # read LOGIN_FAILURE_LIMIT when asked
AXES_COOLOFF_TIME = "core.accounts.services.login_failure_window"
AXES_LOCKOUT_PARAMETERS = [["ip_address", "username"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "core.middleware.client_address"  # TRUSTED_PROXY_HOPS decides
AXES_USERNAME_CALLABLE = "core.accounts.services.login_username"
AXES_LOCKOUT_CALLABLE = "core.accounts.services.login_lockout_response"
AXES_VERBOSE = False
# Registration: off altogether with REGISTRATION_OPEN=false (a 403); otherwise at most this many
# per client address ("<count>/<second|minute|hour|day>", empty or "off": no limit).
REGISTRATION_OPEN = env_bool("REGISTRATION_OPEN", True)
REGISTRATION_RATE_LIMIT = env_str("REGISTRATION_RATE_LIMIT", "20/hour")
# Proxies in front of the APIs that append to X-Forwarded-For (the gateway: 1). 0 trusts no
# header: the client is REMOTE_ADDR. Set it to what is really in front, or clients can pose as
# others (too high) or all share one throttle (too low).
TRUSTED_PROXY_HOPS = env_int("TRUSTED_PROXY_HOPS", 0)

# API keys for service clients: each key's requests per minute (the default when a key is made
# without one, and the most a key may be given), the most keys a user may hold (revoked ones
# aside), and how close to the truth a key's last-used time is kept (it is written at most once
# per this period per key, not on every request).
API_KEY_DEFAULT_RATE_PER_MINUTE = env_int("API_KEY_DEFAULT_RATE_PER_MINUTE", 60)
API_KEY_MAX_RATE_PER_MINUTE = env_int("API_KEY_MAX_RATE_PER_MINUTE", 6000)
API_KEY_MAX_PER_USER = env_int("API_KEY_MAX_PER_USER", 50)
API_KEY_LAST_USED_PRECISION_SECONDS = env_int("API_KEY_LAST_USED_PRECISION_SECONDS", 60)

# The local demo (bin/run, DEBUG only): an admin and a template to try the API with.
DEMO_ADMIN_EMAIL = env_str("DEMO_ADMIN_EMAIL", "admin@example.com")
DEMO_ADMIN_PASSWORD = env_str("DEMO_ADMIN_PASSWORD", "demo-admin-Pass-2026" if DEBUG else "")

# Sending.
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "no-reply@example.com")
SEND_MAX_RECIPIENTS = env_int("SEND_MAX_RECIPIENTS", 1000)
# Rendering one email (subject and body) may not produce more, loop more or take longer than this:
# a staff template's loops multiply with the caller's context. Over a limit the send is a 400.
RENDER_MAX_BYTES = env_int("RENDER_MAX_BYTES", 1024 * 1024)
RENDER_MAX_LOOP_ITERATIONS = env_int("RENDER_MAX_LOOP_ITERATIONS", 10_000)
RENDER_TIMEOUT_MS = env_int("RENDER_TIMEOUT_MS", 1000)
# "<count>/<second|minute|hour|day>" per user; empty or "off" disables the limit (None).
SEND_RATE_LIMIT = env_rate("SEND_RATE_LIMIT", "10/day")
# A scheduled send's request is published this long before its `send_at`: the sender hands it to
# SendGrid then, with `send_at`, and SendGrid holds it until that second. So a burst due at the
# same second has this long to reach the provider, and still leaves on time; a cancel is taken
# until the hand-off (SendGrid cancels scheduled sends only by batch, ten batches at a time, and
# no later than ten minutes before their time). 0: published at `send_at`, sent when a sender
# gets to it.
SCHEDULED_HANDOFF_SECONDS = env_int("SCHEDULED_HANDOFF_SECONDS", 120)
if not 0 <= SCHEDULED_HANDOFF_SECONDS <= 3600:
    raise ImproperlyConfigured(f"SCHEDULED_HANDOFF_SECONDS must be 0 to 3600, got {SCHEDULED_HANDOFF_SECONDS}.")
# One NOTIFY per committing transaction wakes the relay; off leaves it to polling.
OUTBOX_NOTIFY = env_bool("OUTBOX_NOTIFY", True)
OUTBOX_NOTIFY_CHANNEL = env_str("OUTBOX_NOTIFY_CHANNEL", "outbox")

# Larger bodies are refused before they are parsed; JSON nested deeper is refused as it is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("REQUEST_MAX_BYTES", 1024 * 1024)
REQUEST_MAX_JSON_DEPTH = env_int("REQUEST_MAX_JSON_DEPTH", 32)

# RabbitMQ: the command API never talks to it; the relay and the workers do.
RABBITMQ_URL = env_str("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BROKER_PREFIX = env_str("BROKER_PREFIX", "emails")
# AMQP heartbeats: a peer silent for two of them (a network partition) is given up on, and the
# broker returns its unacked messages to the queue.
BROKER_HEARTBEAT_SECONDS = env_int("BROKER_HEARTBEAT_SECONDS", 30)

# Outbox relay.
OUTBOX_BATCH_SIZE = env_int("OUTBOX_BATCH_SIZE", 500)
OUTBOX_POLL_INTERVAL_MS = env_int("OUTBOX_POLL_INTERVAL_MS", 1000)
# After a NOTIFY, the relay waits this long before claiming, so a burst of commits shares one batch.
OUTBOX_GATHER_MS = env_int("OUTBOX_GATHER_MS", 5)
# Under load (its last batch moved more than one row) it stops listening and claims this often.
OUTBOX_GATHER_BUSY_MS = env_int("OUTBOX_GATHER_BUSY_MS", 20)
OUTBOX_CONFIRM_TIMEOUT_MS = env_int("OUTBOX_CONFIRM_TIMEOUT_MS", 10_000)
OUTBOX_RETENTION_DAYS = env_int("OUTBOX_RETENTION_DAYS", 7)
# Retention of what deduplicates (each pruned daily, only where nothing can bring it back).
DELIVERY_RETENTION_DAYS = env_int("DELIVERY_RETENTION_DAYS", 30)
PROCESSED_EVENT_RETENTION_DAYS = env_int("PROCESSED_EVENT_RETENTION_DAYS", 30)
PROVIDER_EVENT_RETENTION_DAYS = env_int("PROVIDER_EVENT_RETENTION_DAYS", 90)
OUTBOX_RELAY_HTTP_PORT = env_int("OUTBOX_RELAY_HTTP_PORT", 9101)

# Sender. The API key is a secret: from the environment (a Kubernetes Secret) only.
SENDGRID_API_KEY = env_str("SENDGRID_API_KEY", "")
SENDGRID_HOST = env_str("SENDGRID_HOST", "https://api.sendgrid.com")
SENDGRID_TIMEOUT_SECONDS = env_int("SENDGRID_TIMEOUT_SECONDS", 10)
SENDER_PREFETCH = env_int("SENDER_PREFETCH", 600)
SENDER_CONCURRENCY = env_int("SENDER_CONCURRENCY", 500)
SENDER_DB_POOL_SIZE = env_int("SENDER_DB_POOL_SIZE", 8)
# Under load (the last statement of the kind carried more than one email), a claim or outcome
# statement waits this long for the threads arriving behind it: fewer commits and round trips.
SENDER_BATCH_LINGER_MS = env_int("SENDER_BATCH_LINGER_MS", 10)
# The waits between a recipient's attempts after transient failures (with ±20% jitter): one more
# attempt than there are tiers, then `failed`. The default rides out a day's outage and more.
SENDER_RETRY_SCHEDULE = env_durations("SENDER_RETRY_SCHEDULE", "10s,30s,2m,5m,15m,30m,1h,2h,4h,8h,8h,8h")
SENDER_LEASE_SECONDS = env_int("SENDER_LEASE_SECONDS", 60)
# A delivery in doubt (the sender died, or the call timed out, after the provider may have taken
# it) waits this long for the provider's own events to say it has it before it is sent again.
SENDER_IN_DOUBT_GRACE_SECONDS = env_int("SENDER_IN_DOUBT_GRACE_SECONDS", 300)
SENDER_KEY_PROBE_SECONDS = env_int("SENDER_KEY_PROBE_SECONDS", 30)
SENDER_SHUTDOWN_GRACE_SECONDS = env_int("SENDER_SHUTDOWN_GRACE_SECONDS", 25)
SENDER_HTTP_PORT = env_int("SENDER_HTTP_PORT", 9102)
# What a delivery in doubt becomes when the grace passed with no word from the provider:
# "retry" sends it again, "hold" leaves it for ops to re-drive.
SENDER_UNKNOWN_OUTCOME = env_str("SENDER_UNKNOWN_OUTCOME", "retry")
if SENDER_UNKNOWN_OUTCOME not in ("retry", "hold"):
    raise ImproperlyConfigured(f"SENDER_UNKNOWN_OUTCOME must be retry or hold, got {SENDER_UNKNOWN_OUTCOME!r}.")

# Projector and query API.
PROJECTOR_BATCH_SIZE = env_int("PROJECTOR_BATCH_SIZE", 100)
PROJECTOR_BATCH_WAIT_MS = env_int("PROJECTOR_BATCH_WAIT_MS", 50)
PROJECTOR_HTTP_PORT = env_int("PROJECTOR_HTTP_PORT", 9103)
QUERY_PAGE_SIZE = env_int("QUERY_PAGE_SIZE", 50)
QUERY_MAX_PAGE_SIZE = env_int("QUERY_MAX_PAGE_SIZE", 200)
# Reconcile: a read row older than this that disagrees with the write side is "behind".
RECONCILE_GRACE_SECONDS = env_int("RECONCILE_GRACE_SECONDS", 300)
# An email not finished (every recipient sent or failed) this long after it was accepted counts as
# stuck: the projector's `emails_unfinished` gauge and reconcile's report. A provider outage makes
# many legitimately so for hours while their retries run.
EMAIL_STUCK_AFTER_SECONDS = env_int("EMAIL_STUCK_AFTER_SECONDS", 900)

# Status webhooks to clients (core.client_webhooks; the notifier delivers them). The waits between
# a message's attempts after failures: one more attempt than there are tiers, then the message has
# failed. The default is Svix's: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h later.
CLIENT_WEBHOOKS_RETRY_SCHEDULE = env_durations("CLIENT_WEBHOOKS_RETRY_SCHEDULE", "5s,5m,30m,2h,5h,10h,10h")
# An endpoint whose every attempt has failed for this long is disabled, with the reason.
CLIENT_WEBHOOKS_DISABLE_AFTER = env_durations("CLIENT_WEBHOOKS_DISABLE_AFTER", "5d")[0]
# Development only: endpoints on loopback, private and link-local addresses, and plain http.
CLIENT_WEBHOOKS_ALLOW_PRIVATE = env_bool("CLIENT_WEBHOOKS_ALLOW_PRIVATE", False)
CLIENT_WEBHOOKS_ALLOW_HTTP = env_bool("CLIENT_WEBHOOKS_ALLOW_HTTP", False)
CLIENT_WEBHOOKS_TIMEOUT_SECONDS = env_int("CLIENT_WEBHOOKS_TIMEOUT_SECONDS", 15)
# Delivery threads of one notifier, and at most this many of them on one endpoint at a time (a
# hanging endpoint holds no more, whatever its backlog).
CLIENT_WEBHOOKS_CONCURRENCY = env_int("CLIENT_WEBHOOKS_CONCURRENCY", 64)
CLIENT_WEBHOOKS_PER_ENDPOINT = env_int("CLIENT_WEBHOOKS_PER_ENDPOINT", 8)
CLIENT_WEBHOOKS_POLL_INTERVAL_MS = env_int("CLIENT_WEBHOOKS_POLL_INTERVAL_MS", 1000)
# The projector NOTIFYs this channel when a batch queued messages; off leaves it to polling.
CLIENT_WEBHOOKS_NOTIFY = env_bool("CLIENT_WEBHOOKS_NOTIFY", True)
CLIENT_WEBHOOKS_NOTIFY_CHANNEL = env_str("CLIENT_WEBHOOKS_NOTIFY_CHANNEL", "client_webhooks")
# After rotating a secret, deliveries are signed with the old one too for this long.
CLIENT_WEBHOOKS_SECRET_OVERLAP_SECONDS = env_int("CLIENT_WEBHOOKS_SECRET_OVERLAP_SECONDS", 24 * 3600)
CLIENT_WEBHOOKS_RETENTION_DAYS = env_int("CLIENT_WEBHOOKS_RETENTION_DAYS", 30)
NOTIFIER_HTTP_PORT = env_int("NOTIFIER_HTTP_PORT", 9104)

# SendGrid Event Webhook: SendGrid's verification key (base64, as its settings page shows it).
SENDGRID_WEBHOOK_PUBLIC_KEY = env_str("SENDGRID_WEBHOOK_PUBLIC_KEY", "")
SENDGRID_WEBHOOK_MAX_AGE_SECONDS = env_int("SENDGRID_WEBHOOK_MAX_AGE_SECONDS", 600)

Q_CLUSTER = {
    "name": "emails",
    "orm": "default",
    "workers": env_int("Q_WORKERS", 2),
    "timeout": env_int("Q_TIMEOUT_SECONDS", 600),
    "retry": env_int("Q_RETRY_SECONDS", 900),
    "catch_up": False,
}
# The scheduler's liveness probe (`manage.py scheduler_alive`) fails once the cluster's last
# heartbeat (one every half second while it runs) is older than this.
SCHEDULER_HEARTBEAT_MAX_AGE_SECONDS = env_int("SCHEDULER_HEARTBEAT_MAX_AGE_SECONDS", 30)

LOG_JSON = env_bool("LOG_JSON", not DEBUG)
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING_CONFIG = "logging.config.dictConfig"
LOGGING = logging_config(json=LOG_JSON, level=LOG_LEVEL)
configure_structlog()

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
