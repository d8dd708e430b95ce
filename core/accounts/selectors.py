"""Account reads: a user's API keys."""

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from core.accounts.models import ApiKey, User


def api_key_list(*, user: User) -> QuerySet[ApiKey]:
    """The user's own keys, revoked ones included, newest first. Staff see only theirs here too:
    ops revoke anyone's in the admin."""
    return ApiKey.objects.filter(user=user).order_by("-created_at", "-id")


def api_key_get(*, user: User, api_key_id: int) -> ApiKey:
    """The user's key, or Http404 (another user's key is not found, not forbidden)."""
    return get_object_or_404(ApiKey, pk=api_key_id, user=user)
