"""Settings for the benchmark's reference endpoints (bench/variants_app.py): the command API's
settings with another URL conf. Never deployed."""

from command_api.settings import *  # noqa: F401,F403

ROOT_URLCONF = "variants_app"
