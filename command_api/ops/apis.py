"""Staff-only ops endpoints for the outbox: status, list, replay."""

from dataclasses import asdict

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.pagination import page_of
from core.outbox.selectors import STATES, OutboxFilter, outbox_event_list, outbox_status
from core.outbox.services import outbox_replay
from core.validation import LineField, TextField


class OutboxEventSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    aggregatetype = serializers.CharField()
    aggregateid = serializers.CharField()
    payload = serializers.JSONField()
    headers = serializers.JSONField()
    created_at = serializers.DateTimeField()
    not_before = serializers.DateTimeField()
    published_at = serializers.DateTimeField(allow_null=True)
    failed_at = serializers.DateTimeField(allow_null=True)
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    last_replay_id = serializers.IntegerField(allow_null=True)


class OutboxFilterSerializer(serializers.Serializer):
    class Meta:
        ref_name = "OutboxSelection"

    event_ids = serializers.ListField(child=serializers.UUIDField(), required=False, max_length=10_000)
    aggregate_id = LineField(required=False, max_length=64)
    event_type = LineField(required=False, max_length=64)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)

    def to_filter(self) -> OutboxFilter:
        data = self.validated_data
        return OutboxFilter(
            event_ids=tuple(str(i) for i in data.get("event_ids", ())),
            aggregate_id=data.get("aggregate_id"),
            event_type=data.get("event_type"),
            since=data.get("since"),
            until=data.get("until"),
        )


class OutboxListFilterSerializer(serializers.Serializer):
    """Query parameters of the list; `event_id` may repeat."""

    class Meta:
        ref_name = "OutboxListFilter"

    event_id = serializers.ListField(child=serializers.UUIDField(), required=False)
    aggregate_id = LineField(required=False, max_length=64)
    event_type = LineField(required=False, max_length=64)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    state = serializers.ChoiceField(choices=STATES, required=False)
    failing = serializers.BooleanField(required=False, default=False)


class OutboxListApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(parameters=[OutboxListFilterSerializer],
                   responses=page_of(OutboxEventSerializer, name="OutboxEventPage"))
    def get(self, request):
        query = OutboxListFilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        selection = OutboxFilter(
            event_ids=tuple(str(i) for i in data.get("event_id", ())),
            aggregate_id=data.get("aggregate_id"),
            event_type=data.get("event_type"),
            since=data.get("since"),
            until=data.get("until"),
            state=data.get("state"),
            failing=data["failing"],
        )
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(outbox_event_list(selection=selection), request, view=self)
        return paginator.get_paginated_response(OutboxEventSerializer(page, many=True).data)


class OutboxStatusApi(APIView):
    permission_classes = [IsAdminUser]

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "OutboxStatus"

        backlog = serializers.IntegerField()
        scheduled = serializers.IntegerField()
        oldest_due_age_seconds = serializers.FloatField()
        published_last_hour = serializers.IntegerField()
        failed = serializers.IntegerField()
        retrying = serializers.IntegerField()

    @extend_schema(responses=OutputSerializer)
    def get(self, request):
        return Response(self.OutputSerializer(asdict(outbox_status())).data)


class OutboxReplayApi(APIView):
    permission_classes = [IsAdminUser]

    class InputSerializer(OutboxFilterSerializer):
        class Meta:
            ref_name = "OutboxReplayInput"

        dry_run = serializers.BooleanField(required=False, default=False)
        reason = TextField(required=False, default="", allow_blank=True, max_length=1000)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "OutboxReplayResult"

        count = serializers.IntegerField()
        dry_run = serializers.BooleanField()
        replay_id = serializers.IntegerField(allow_null=True)
        sample = OutboxEventSerializer(many=True)

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = outbox_replay(
            selection=data.to_filter(),
            actor=request.user.get_username(),
            via="api",
            reason=data.validated_data["reason"],
            dry_run=data.validated_data["dry_run"],
        )
        return Response(
            self.OutputSerializer(
                {
                    "count": result.count,
                    "dry_run": result.dry_run,
                    "replay_id": result.replay.pk if result.replay else None,
                    "sample": result.sample,
                }
            ).data
        )
