from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from command_api.emails import selectors, services
from core.accounts.models import ApiKeyScope
from core.errors import field_error
from core.pagination import page_of
from core.text import MAX_ID
from core.validation import JSONObjectField, LineField, TextField


class IsStaffOrReadOnly(BasePermission):
    """Anyone may read; only staff may change."""

    def has_permission(self, request, view):
        if request.method in SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


# OpenAPI security requirements: a token, an API key with the `templates` scope, or none.
# drf-spectacular's `auth` takes these as they are, though its annotation says a list of names
# (hence the ignores below).
READ_WITH_OR_WITHOUT_TOKEN: list[dict[str, list[str]]] = [{"tokenAuth": []}, {"apiKeyAuth": []}, {}]


class EmailTemplateOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    subject = serializers.CharField()
    body = serializers.CharField()
    created = serializers.DateTimeField()
    modified = serializers.DateTimeField()


class EmailTemplateInputSerializer(serializers.Serializer):
    name = LineField(max_length=200)
    subject = LineField(max_length=998)
    body = TextField(trim_whitespace=False)


class EmailTemplateListCreateApi(APIView):
    permission_classes = [IsStaffOrReadOnly]
    api_key_scope = ApiKeyScope.TEMPLATES  # reading too: a key is refused where it has no scope

    @extend_schema(
        responses=page_of(EmailTemplateOutputSerializer, name="EmailTemplatePage"),
        auth=READ_WITH_OR_WITHOUT_TOKEN,  # type: ignore[arg-type]
        operation_id="v1_emails_email_template_list",
    )
    def get(self, request):
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(selectors.email_template_list(), request, view=self)
        return paginator.get_paginated_response(EmailTemplateOutputSerializer(page, many=True).data)

    @extend_schema(request=EmailTemplateInputSerializer, responses={201: EmailTemplateOutputSerializer})
    def post(self, request):
        data = EmailTemplateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        template = services.email_template_create(**data.validated_data)
        return Response(EmailTemplateOutputSerializer(template).data, status=status.HTTP_201_CREATED)


class EmailTemplateDetailApi(APIView):
    permission_classes = [IsStaffOrReadOnly]
    api_key_scope = ApiKeyScope.TEMPLATES

    @extend_schema(responses=EmailTemplateOutputSerializer, auth=READ_WITH_OR_WITHOUT_TOKEN)  # type: ignore[arg-type]
    def get(self, request, template_id: int):
        template = selectors.email_template_get(template_id=template_id)
        return Response(EmailTemplateOutputSerializer(template).data)

    @extend_schema(request=EmailTemplateInputSerializer, responses=EmailTemplateOutputSerializer)
    def put(self, request, template_id: int):
        return self._update(request, template_id, partial=False)

    @extend_schema(request=EmailTemplateInputSerializer, responses=EmailTemplateOutputSerializer)
    def patch(self, request, template_id: int):
        return self._update(request, template_id, partial=True)

    @extend_schema(responses={204: None})
    def delete(self, request, template_id: int):
        services.email_template_delete(template=selectors.email_template_get(template_id=template_id))
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _update(self, request, template_id: int, *, partial: bool):
        template = selectors.email_template_get(template_id=template_id)
        data = EmailTemplateInputSerializer(data=request.data, partial=partial)
        data.is_valid(raise_exception=True)
        template = services.email_template_update(template=template, data=data.validated_data)
        return Response(EmailTemplateOutputSerializer(template).data)


IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key_from(request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not (1 <= len(key) <= 255) or not key.isprintable():
        raise field_error(IDEMPOTENCY_HEADER, "The key must be 1 to 255 printable characters.")
    return key


@extend_schema_field(OpenApiTypes.DATETIME)
class SendAtField(LineField):
    """A date-time as given (the service parses it, so every refusal names `send_at` alike)."""


class SentEmailCreateApi(APIView):
    api_key_scope = ApiKeyScope.SEND

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SentEmailInput"

        recipients = serializers.ListField(child=serializers.CharField(trim_whitespace=False))
        template = serializers.IntegerField(min_value=1, max_value=MAX_ID)
        # DRF's metaclass takes declared fields off the class, so Serializer.context stays as it is.
        context = JSONObjectField(required=False, default=dict)  # type: ignore[assignment]
        send_at = SendAtField(
            required=False,
            allow_null=True,
            max_length=64,
            help_text="Send at this time (ISO 8601 with a UTC offset or Z), at most 72 hours ahead; "
            "absent or null: at once. It is handed to SendGrid, which holds it until then, "
            "SCHEDULED_HANDOFF_SECONDS (by default 2 minutes) before; until then it can be cancelled.",
        )

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SentEmailAccepted"

        message = serializers.CharField()
        id = serializers.IntegerField()

    @extend_schema(
        request=InputSerializer,
        responses={202: OutputSerializer},
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="Retrying with the same key returns the first answer and sends nothing new.",
            )
        ],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.sent_email_create(
            sender=request.user,
            template_id=data.validated_data["template"],
            recipients=data.validated_data["recipients"],
            context=data.validated_data["context"],
            correlation_id=request.correlation_id,
            idempotency_key=idempotency_key_from(request),
            send_at=data.validated_data.get("send_at"),
        )
        body = {"message": services.SEND_ACCEPTED_MESSAGE, "id": result.email.pk}
        headers = {} if result.created else {"Idempotent-Replayed": "true"}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_202_ACCEPTED, headers=headers)


class SentEmailCancelApi(APIView):
    api_key_scope = ApiKeyScope.SEND  # cancelling is part of sending

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SentEmailCancelled"

        id = serializers.IntegerField()
        status = serializers.ChoiceField(choices=["cancelled"])
        message = serializers.CharField()

    @extend_schema(
        request=None,
        responses={
            202: OpenApiResponse(OutputSerializer, description="Cancelled now: no recipient will get it."),
            200: OpenApiResponse(OutputSerializer, description="It was cancelled already; nothing changed."),
            404: OpenApiResponse(description="No such email of yours."),
            409: OpenApiResponse(description="A sender has already taken it (sending, sent or failed)."),
        },
    )
    def post(self, request, email_id: int):
        email = selectors.sent_email_get_owned(email_id=email_id, user=request.user)
        result = services.sent_email_cancel(email=email, user=request.user, correlation_id=request.correlation_id)
        body = {
            "id": email.pk,
            "status": "cancelled",
            "message": "Email cancelled." if result.cancelled_now else "Email was already cancelled.",
        }
        return Response(
            self.OutputSerializer(body).data,
            status=status.HTTP_202_ACCEPTED if result.cancelled_now else status.HTTP_200_OK,
        )
