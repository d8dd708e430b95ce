"""Settings of the command API process (the write side)."""

from core.settings import *  # noqa: F401,F403

ROOT_URLCONF = "command_api.urls"
WSGI_APPLICATION = "command_api.wsgi.application"

# Shown in pg_stat_activity next to the sender's, the relay's and the projector's connections.
DATABASES["default"]["OPTIONS"]["application_name"] = "command-api"  # noqa: F405
