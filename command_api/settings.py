"""Settings of the command API process (the write side)."""

from core.settings import *  # noqa: F401,F403

ROOT_URLCONF = "command_api.urls"
WSGI_APPLICATION = "command_api.wsgi.application"
