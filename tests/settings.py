"""Test settings: the command API's, with a test-only secret and a fast password hasher."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-not-a-secret")
os.environ.setdefault("SEND_RATE_LIMIT", "off")
os.environ.setdefault("REGISTRATION_RATE_LIMIT", "off")

from command_api.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
