"""Settings of the relay process and the outbox CLI: the shared ones, no URLs served."""

from core.settings import *  # noqa: F401,F403

ROOT_URLCONF = "command_api.urls"  # only for the admin links the CLI may print
