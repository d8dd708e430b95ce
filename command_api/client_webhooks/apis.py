from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from core.client_webhooks import selectors, services
from core.client_webhooks.addresses import MAX_URL_LENGTH
from core.client_webhooks.events import EVENT_TYPES
from core.client_webhooks.models import WebhookMessage
from core.pagination import page_of
from core.text import MAX_ID
from core.validation import LineField


class EndpointOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "WebhookEndpoint"

    id = serializers.IntegerField()
    url = serializers.CharField()
    description = serializers.CharField()
    event_types = serializers.ListField(
        child=serializers.CharField(), help_text="The event types posted; empty: every one."
    )
    enabled = serializers.BooleanField()
    disabled_reason = serializers.CharField(help_text="Why it was disabled (empty while enabled).")
    disabled_at = serializers.DateTimeField(allow_null=True)
    failing_since = serializers.DateTimeField(
        allow_null=True, help_text="Every attempt has failed since then; null while it answers."
    )
    created_at = serializers.DateTimeField()


class EndpointWithSecretSerializer(EndpointOutputSerializer):
    class Meta:
        ref_name = "WebhookEndpointWithSecret"

    secret = serializers.CharField(help_text="whsec_…: verify each delivery's webhook-signature with it.")


class EndpointInputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "WebhookEndpointInput"

    url = LineField(max_length=MAX_URL_LENGTH)
    description = LineField(max_length=200, required=False, allow_blank=True, default="")
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPES),
        required=False,
        default=list,
        max_length=len(EVENT_TYPES),
        help_text="Empty or left out: every event type.",
    )
    enabled = serializers.BooleanField(required=False, default=True)


def _paginated(view, request, queryset, serializer):
    paginator = PageNumberPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


class WebhookEndpointListCreateApi(APIView):
    @extend_schema(
        responses=page_of(EndpointOutputSerializer, name="WebhookEndpointPage"),
        operation_id="v1_webhook_endpoints_list",
    )
    def get(self, request):
        return _paginated(self, request, selectors.webhook_endpoint_list(owner=request.user), EndpointOutputSerializer)

    @extend_schema(request=EndpointInputSerializer, responses={201: EndpointWithSecretSerializer})
    def post(self, request):
        data = EndpointInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        endpoint = services.webhook_endpoint_create(
            owner=request.user, url=fields["url"], description=fields["description"], event_types=fields["event_types"]
        )
        if not fields["enabled"]:
            endpoint = services.webhook_endpoint_update(endpoint=endpoint, data={"enabled": False})
        return Response(EndpointWithSecretSerializer(endpoint).data, status=status.HTTP_201_CREATED)


class WebhookEndpointDetailApi(APIView):
    @extend_schema(responses=EndpointOutputSerializer)
    def get(self, request, endpoint_id: int):
        endpoint = selectors.webhook_endpoint_get(owner=request.user, endpoint_id=endpoint_id)
        return Response(EndpointOutputSerializer(endpoint).data)

    @extend_schema(request=EndpointInputSerializer, responses=EndpointOutputSerializer)
    def patch(self, request, endpoint_id: int):
        endpoint = selectors.webhook_endpoint_get(owner=request.user, endpoint_id=endpoint_id)
        data = EndpointInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        endpoint = services.webhook_endpoint_update(endpoint=endpoint, data=data.validated_data)
        return Response(EndpointOutputSerializer(endpoint).data)

    @extend_schema(responses={204: None})
    def delete(self, request, endpoint_id: int):
        endpoint = selectors.webhook_endpoint_get(owner=request.user, endpoint_id=endpoint_id)
        services.webhook_endpoint_delete(endpoint=endpoint)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookEndpointRotateSecretApi(APIView):
    @extend_schema(request=None, responses=EndpointWithSecretSerializer)
    def post(self, request, endpoint_id: int):
        endpoint = selectors.webhook_endpoint_get(owner=request.user, endpoint_id=endpoint_id)
        endpoint = services.webhook_endpoint_rotate_secret(endpoint=endpoint)
        return Response(EndpointWithSecretSerializer(endpoint).data)


class AttemptSerializer(serializers.Serializer):
    class Meta:
        ref_name = "WebhookAttempt"

    attempted_at = serializers.DateTimeField()
    status_code = serializers.IntegerField(allow_null=True)
    duration_ms = serializers.IntegerField()
    response = serializers.CharField()
    error = serializers.CharField()


class MessageSerializer(serializers.Serializer):
    class Meta:
        ref_name = "WebhookMessage"

    id = serializers.UUIDField(help_text="The webhook-id header of every attempt.")
    event_type = serializers.CharField()
    email_id = serializers.IntegerField()
    sequence = serializers.IntegerField()
    state = serializers.ChoiceField(choices=[s for s, _ in WebhookMessage.STATES])
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(help_text="When a pending message is tried next.")
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    payload = serializers.JSONField()
    attempt_log = AttemptSerializer(many=True)


class MessageFilterSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=[s for s, _ in WebhookMessage.STATES], required=False)
    email_id = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)
    since = serializers.DateTimeField(required=False)


class WebhookMessageListApi(APIView):
    @extend_schema(
        parameters=[MessageFilterSerializer],
        responses=page_of(MessageSerializer, name="WebhookMessagePage"),
        operation_id="v1_webhook_endpoints_messages_list",
    )
    def get(self, request, endpoint_id: int):
        endpoint = selectors.webhook_endpoint_get(owner=request.user, endpoint_id=endpoint_id)
        filters = MessageFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        messages = selectors.webhook_message_list(endpoint=endpoint, **filters.validated_data)
        return _paginated(self, request, messages, MessageSerializer)


class ReplayResultSerializer(serializers.Serializer):
    class Meta:
        ref_name = "WebhookReplayResult"

    replayed = serializers.IntegerField()


class WebhookMessageReplayApi(APIView):
    @extend_schema(request=None, responses={202: ReplayResultSerializer})
    def post(self, request, endpoint_id: int, message_id):
        endpoint = selectors.webhook_endpoint_get(owner=request.user, endpoint_id=endpoint_id)
        message = selectors.webhook_message_get(endpoint=endpoint, message_id=str(message_id))
        replayed = services.webhook_messages_replay(endpoint=endpoint, message_ids=[str(message.pk)])
        return Response({"replayed": replayed}, status=status.HTTP_202_ACCEPTED)


class WebhookReplayApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "WebhookReplayInput"

        since = serializers.DateTimeField(help_text="Messages created at or after this time.")
        state = serializers.ChoiceField(
            choices=[s for s, _ in WebhookMessage.STATES],
            required=False,
            help_text="Only messages in this state (e.g. failed); left out: all.",
        )

    @extend_schema(request=InputSerializer, responses={202: ReplayResultSerializer})
    def post(self, request, endpoint_id: int):
        endpoint = selectors.webhook_endpoint_get(owner=request.user, endpoint_id=endpoint_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        replayed = services.webhook_messages_replay(
            endpoint=endpoint, since=data.validated_data["since"], state=data.validated_data.get("state")
        )
        return Response({"replayed": replayed}, status=status.HTTP_202_ACCEPTED)
