"""Settings of the query API and the projector (the read side), deployable on its own."""

from core.settings import *  # noqa: F401,F403
from core.settings import DATABASES as _SHARED_DATABASES

INSTALLED_APPS = [
    "django.contrib.auth",  # the callers: users of core.accounts, by their knox tokens
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",  # the API docs' assets
    "django.contrib.postgres",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    *INSTALLED_APPS,  # noqa: F405
    "core.accounts",
    "query_api",
    "core.client_webhooks",
]
# No sessions, no admin, no logins: a token on every request (DRF authenticates it).
MIDDLEWARE = [
    "core.http_metrics.RequestMetricsMiddleware",  # first: it counts every answer, refusals included
    "core.middleware.CorrelationIdMiddleware",
    # Before anything reads the Host: the probes' is the pod's IP, never an allowed host.
    "core.middleware.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]

ROOT_URLCONF = "query_api.urls"
WSGI_APPLICATION = "query_api.wsgi.application"
SPECTACULAR_SETTINGS = {**SPECTACULAR_SETTINGS, "TITLE": "Email delivery platform: sent-email log"}  # noqa: F405

# Shown in pg_stat_activity next to the other services' connections.
_default = _SHARED_DATABASES["default"]
DATABASES = {"default": {**_default, "OPTIONS": {**_default["OPTIONS"], "application_name": "query-api"}}}
