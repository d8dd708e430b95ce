"""Settings of the query API process (the read side), deployable on its own."""

from core.settings import *  # noqa: F401,F403

ROOT_URLCONF = "query_api.urls"
WSGI_APPLICATION = "query_api.wsgi.application"
SPECTACULAR_SETTINGS = {**SPECTACULAR_SETTINGS, "TITLE": "Email delivery platform: sent-email log"}  # noqa: F405

# Shown in pg_stat_activity next to the other services' connections.
DATABASES["default"]["OPTIONS"]["application_name"] = "query-api"  # noqa: F405
