"""The suppression list's API: list, add and remove addresses of one's own account; staff name
another account with `owner`. The list itself is in core.suppressions (the sender reads it)."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from core.accounts.models import User
from core.errors import ApplicationError, field_error
from core.pagination import page_of
from core.suppressions import selectors, services
from core.suppressions.sql import REASONS
from core.text import MAX_ID, parse_id
from core.validation import LineField

OWNER_HELP = "Staff only: the account (user id) to act on; the caller's own by default."
OWNER = OpenApiParameter("owner", int, description=OWNER_HELP)


def _owner_id(request, raw) -> int:
    """The account the request acts on: the caller's, or (staff only) the one `raw` names."""
    if raw is None or raw == "":
        return request.user.pk
    owner_id = parse_id(raw)
    if owner_id is None:
        raise field_error("owner", f"{raw!r} is not a user id.")
    if owner_id == request.user.pk:
        return owner_id
    if not request.user.is_staff:
        raise ApplicationError(
            "Only staff may act on another account's suppressions.",
            errors={"owner": ["Only staff may name another account."]},
            status_code=status.HTTP_403_FORBIDDEN,
        )
    if not User.objects.filter(pk=owner_id).exists():
        raise field_error("owner", f"No user has id {owner_id}.")
    return owner_id


class SuppressionOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "Suppression"

    id = serializers.IntegerField()
    owner = serializers.IntegerField(source="owner_id")
    address = serializers.CharField()
    reason = serializers.ChoiceField(choices=REASONS)
    detail = serializers.CharField()
    # A declared field named like Field.source: the metaclass takes it out of the class, mypy can't tell.
    source = serializers.CharField(help_text="Who added it: webhook, api or admin.")  # type: ignore[assignment]
    email_id = serializers.IntegerField(allow_null=True, help_text="The email whose provider event added it.")
    created_at = serializers.DateTimeField()


class SuppressionListCreateApi(APIView):
    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SuppressionListFilter"

        address = LineField(required=False, max_length=254, help_text="Only this address (any case).")
        reason = serializers.ChoiceField(choices=REASONS, required=False)
        owner = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID, help_text=OWNER_HELP)

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SuppressionInput"

        address = serializers.CharField(max_length=254, help_text="Stored lower-cased.")
        reason = serializers.ChoiceField(choices=REASONS, required=False, default="manual")
        detail = LineField(required=False, default="", allow_blank=True, max_length=1000)
        owner = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID, help_text=OWNER_HELP)

    @extend_schema(
        parameters=[FilterSerializer],
        responses=page_of(SuppressionOutputSerializer, name="SuppressionPage"),
        operation_id="v1_suppressions_list",
    )
    def get(self, request):
        query = self.FilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        address = services.normalize_address(data["address"]) if data.get("address") else None
        rows = selectors.suppression_list(
            owner_id=_owner_id(request, data.get("owner")), address=address, reason=data.get("reason")
        )
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(SuppressionOutputSerializer(page, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: SuppressionOutputSerializer, 200: SuppressionOutputSerializer},
        description="Adds the address (201). An address already on the list keeps its first reason and time (200).",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        entry, created = services.suppression_add(
            owner_id=_owner_id(request, data.validated_data.get("owner")),
            address=data.validated_data["address"],
            reason=data.validated_data["reason"],
            detail=data.validated_data["detail"],
            source="api",
        )
        return Response(
            SuppressionOutputSerializer(entry).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class SuppressionDetailApi(APIView):
    @extend_schema(parameters=[OWNER], responses={204: None}, operation_id="v1_suppressions_destroy")
    def delete(self, request, address: str):
        services.suppression_remove(
            owner_id=_owner_id(request, request.query_params.get("owner")),
            address=address,
            actor=request.user.get_username(),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
