"""Test settings: the command API's, with every app installed (the tests exercise every service in
this one process), a test-only secret and a fast password hasher."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-not-a-secret")
os.environ.setdefault("SEND_RATE_LIMIT", "off")
os.environ.setdefault("REGISTRATION_RATE_LIMIT", "off")

from command_api.settings import *  # noqa: E402,F401,F403
from deployment.settings import INSTALLED_APPS  # noqa: E402,F401

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
