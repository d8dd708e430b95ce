"""Reads of the emails app."""

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from command_api.emails.models import EmailTemplate


def email_template_list() -> QuerySet[EmailTemplate]:
    return EmailTemplate.objects.order_by("id")


def email_template_get(*, template_id: int) -> EmailTemplate:
    """The template, or Http404."""
    return get_object_or_404(EmailTemplate, pk=template_id)
