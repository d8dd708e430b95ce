"""Reads of the emails app."""

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from command_api.emails.models import EmailTemplate, SentEmail


def email_template_list() -> QuerySet[EmailTemplate]:
    return EmailTemplate.objects.order_by("id")


def email_template_get(*, template_id: int) -> EmailTemplate:
    """The template, or Http404."""
    return get_object_or_404(EmailTemplate, pk=template_id)


def sent_email_get_owned(*, email_id: int, user) -> SentEmail:
    """The caller's own email, or Http404 (another user's email is not found, not forbidden:
    its existence is not theirs to learn)."""
    return get_object_or_404(SentEmail, pk=email_id, sender=user)
