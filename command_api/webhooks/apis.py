from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from command_api.webhooks.services import sendgrid_events_receive


class RawJSONParser(BaseParser):
    """Keep the body as SendGrid sent it: the signature covers the exact bytes."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read().decode("utf-8", errors="replace")


class SendGridWebhookApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    parser_classes = [RawJSONParser]

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "SendGridWebhookResult"

        accepted = serializers.IntegerField()
        duplicates = serializers.IntegerField()
        ignored = serializers.IntegerField()
        rejected = serializers.IntegerField()

    @extend_schema(
        request={"application/json": {"type": "array", "items": {"type": "object"}}}, responses={200: OutputSerializer}
    )
    def post(self, request):
        result = sendgrid_events_receive(
            body=request.data if isinstance(request.data, str) else "",
            signature=request.headers.get("X-Twilio-Email-Event-Webhook-Signature"),
            timestamp=request.headers.get("X-Twilio-Email-Event-Webhook-Timestamp"),
            correlation_id=request.correlation_id,
        )
        return Response(self.OutputSerializer(result).data)
