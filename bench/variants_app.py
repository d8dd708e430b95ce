"""Reference endpoints for bench/load.py, never deployed:

- POST sync-publish/: the original design: the same authentication, validation, rendering and
  inserts as the real endpoint, but instead of an outbox row the request publishes the event to
  RabbitMQ itself, waiting for the broker's confirm, before answering;
- POST bare/: the framework's ceiling: a DRF view that only does the same inserts (no
  authentication, no validation, no rendering);
- POST celery/: the Celery reference (bench/celery_reference.py): the same authentication,
  validation and rendering, then the email queued to Celery; nothing stored.
"""

import json
import threading
import uuid

import pika
from django.conf import settings
from django.db import transaction
from django.urls import path
from django.utils import timezone
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from command_api.emails import services
from command_api.emails.apis import SentEmailCreateApi
from command_api.emails.models import EmailTemplate, SentEmail, SentEmailRecipient
from core.accounts.models import User
from core.broker import connection_parameters, topology_from_settings

_local = threading.local()


def _channel():
    channel = getattr(_local, "channel", None)
    if channel is None or channel.is_closed:
        connection = pika.BlockingConnection(connection_parameters(settings.RABBITMQ_URL, name="sync-publish"))
        channel = connection.channel()
        channel.confirm_delivery()
        _local.channel = channel
    return channel


def _validated_and_rendered(request, *, templates: dict | None = None):
    """What the real endpoint does before it writes: validate, clean the recipients, render.
    Returns (validated data, recipients, template, subject, body). With `templates`, the
    template is kept there, as the real endpoint keeps it in memory."""
    data = SentEmailCreateApi.InputSerializer(data=request.data)
    data.is_valid(raise_exception=True)
    recipients = services.clean_recipients(data.validated_data["recipients"])
    template_id = data.validated_data["template"]
    template = templates.get(template_id) if templates is not None else None
    if template is None:
        template = EmailTemplate.objects.get(pk=template_id)
        if templates is not None:
            templates[template_id] = template
    subject, body = services._render(template, data.validated_data["context"])
    return data.validated_data, recipients, template, subject, body


class SyncPublishApi(APIView):
    def post(self, request):
        validated, recipients, template, subject, body = _validated_and_rendered(request)
        with transaction.atomic():
            email = SentEmail.objects.create(
                sender=request.user,
                template=template,
                template_name=template.name,
                from_email=settings.DEFAULT_FROM_EMAIL,
                subject=subject,
                body=body,
                context=validated["context"],
                correlation_id=request.correlation_id,
                created=timezone.now(),
            )
            SentEmailRecipient.objects.bulk_create(SentEmailRecipient(email=email, address=a) for a in recipients)
        event_id = str(uuid.uuid4())
        payload = {
            "type": "email.requested",
            "event_id": event_id,
            "email_id": email.pk,
            "recipients": recipients,
            "subject": subject,
            "body_html": body,
        }
        _channel().basic_publish(
            topology_from_settings().exchange,
            "bench.sync",
            json.dumps(payload).encode(),
            pika.BasicProperties(message_id=event_id, delivery_mode=2),
        )
        return Response({"message": services.SEND_ACCEPTED_MESSAGE, "id": email.pk}, status=status.HTTP_202_ACCEPTED)


class CeleryApi(APIView):
    def post(self, request):
        from celery_reference import send_email

        _, recipients, _, subject, body = _validated_and_rendered(request, templates=_templates)
        send_email.delay(recipients=recipients, subject=subject, html=body, from_email=settings.DEFAULT_FROM_EMAIL)
        return Response({"message": services.SEND_ACCEPTED_MESSAGE}, status=status.HTTP_202_ACCEPTED)


_templates: dict[int, EmailTemplate] = {}


class BareInsertApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    def post(self, request):
        owner = getattr(_local, "owner", None) or User.objects.order_by("pk").first()
        _local.owner = owner
        with transaction.atomic():
            email = SentEmail.objects.create(
                sender=owner,
                template_name="bare",
                from_email="f@example.com",
                subject="s",
                body="b",
                context={},
                correlation_id="bare",
                created=timezone.now(),
            )
            SentEmailRecipient.objects.bulk_create(
                SentEmailRecipient(email=email, address=a) for a in request.data["recipients"]
            )
        return Response({"id": email.pk}, status=status.HTTP_202_ACCEPTED)


urlpatterns = [
    path("sync-publish/", SyncPublishApi.as_view()),
    path("bare/", BareInsertApi.as_view()),
    path("celery/", CeleryApi.as_view()),
]
