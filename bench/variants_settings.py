"""Settings for the benchmark's reference endpoints (bench/variants_app.py) and the Celery
reference's worker (bench/celery_reference.py): the command API's settings with another URL conf,
and django-anymail's SendGrid backend pointed at the fake SendGrid the Celery reference uses.
Never deployed."""

import os

from command_api.settings import *  # noqa: F401,F403

ROOT_URLCONF = "variants_app"
EMAIL_BACKEND = "anymail.backends.sendgrid.EmailBackend"
ANYMAIL = {
    "SENDGRID_API_KEY": "SG.fake-key",
    "SENDGRID_API_URL": os.environ.get("CELERY_REFERENCE_SENDGRID_URL", "http://127.0.0.1:8026") + "/v3/",
}
