"""The Celery reference for bench/load.py, never deployed: what Django users who send email in
the background usually run instead of this platform. The endpoint (bench/variants_app.py,
POST celery/) authenticates, validates and renders like the real one, then queues the email to
Celery on the same RabbitMQ; a Celery worker delivers it through django-anymail's SendGrid
backend to a fake SendGrid like the pipeline's. Nothing is stored and no status is tracked.

The worker runs the way Celery's documentation recommends for I/O-bound tasks, a green-thread
pool (gevent) with a concurrency far above the core count:

    celery -A celery_reference worker --pool gevent --concurrency 100 --without-heartbeat --without-gossip

Without the last two, Celery 5.7 with gevent 26.9 ran one task at a time here (a task that only
sleeps 50 ms: 20 of them took 1.9 s; with both off, 25 ms): the worker's event heartbeats and
gossip between workers, which one worker does not need, are off.

bench/load.py starts it (with `bench/` on PYTHONPATH) and takes `--celery-pool` and
`--celery-concurrency` to try others (`threads`, 32 is the other common choice).
"""

import os

import django
from celery import Celery
from django.apps import apps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "variants_settings")
if not apps.ready:
    django.setup()

from django.conf import settings  # noqa: E402
from django.core.mail import EmailMessage  # noqa: E402

app = Celery("celery_reference")
app.conf.update(
    broker_url=settings.RABBITMQ_URL.split(",")[0],  # the first node: this machine has one
    task_default_queue=f"{settings.BROKER_PREFIX}.celery",
    task_ignore_result=True,  # no result backend: the caller never waits for the send
    worker_hijack_root_logger=False,
)


@app.task(name="send_email")
def send_email(*, recipients: list[str], subject: str, html: str, from_email: str) -> None:
    """One SendGrid call for the email, one personalization per recipient (anymail's batch send,
    turned on by `merge_data`), so no recipient sees another: what the platform's sender does."""
    message = EmailMessage(subject=subject, body=html, from_email=from_email, to=recipients)
    message.content_subtype = "html"
    message.merge_data = {}  # type: ignore[attr-defined]  # anymail's attribute
    message.send()
