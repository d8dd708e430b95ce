"""Settings of the command API process (the write side)."""

import json

from core.settings import *  # noqa: F401,F403
from core.settings import DATABASES as _SHARED_DATABASES

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    *INSTALLED_APPS,  # noqa: F405  (django_q: its admin shows the scheduled jobs and their failures)
    "axes",
    "core.accounts",
    "core.outbox",
    "command_api.emails",
    "command_api.webhooks",
    "core.deliveries",
    "core.client_webhooks",
    "core.suppressions",
]

ROOT_URLCONF = "command_api.urls"
WSGI_APPLICATION = "command_api.wsgi.application"

# Shown in pg_stat_activity next to the sender's, the relay's and the projector's connections.
# A copy, not the shared dict changed in place: deployment/settings.py reads this module too.
_default = _SHARED_DATABASES["default"]
DATABASES = {"default": {**_default, "OPTIONS": {**_default["OPTIONS"], "application_name": "command-api"}}}

# The docs page (api/docs/) is the one at the gateway's base URL, so it offers both APIs' schemas
# with a selector: this one and the query API's, which the gateway routes to the query API (on
# the command API's own port only the first answers). Swagger UI lists several schemas only in
# its standalone layout, whose preset is a JavaScript object: drf-spectacular passes a string
# setting to the page unchanged, as JavaScript.
schemas = json.dumps(
    [
        {"name": "Command API: users, templates, sending, ops, webhooks", "url": "/api/schema/"},
        {"name": "Query API: the sent-email log", "url": "/api/schema/sent-email-log/"},
    ]
)
SPECTACULAR_SETTINGS = {
    **SPECTACULAR_SETTINGS,  # noqa: F405
    "SWAGGER_UI_SETTINGS": f'{{"deepLinking": true, "urls": {schemas}, "layout": "StandaloneLayout", '
    '"presets": [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset]}',
}
