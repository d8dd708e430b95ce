"""Staff-only ops endpoints: the outbox (status, list, replay), deliveries (list, re-drive) and
dead letters (list, re-drive, dismiss)."""

from dataclasses import asdict

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.deliveries.models import Delivery
from core.deliveries.services import REDRIVABLE, RedriveSelection, deliveries_redrive
from core.outbox.deadletters import dead_letters_dismiss, dead_letters_redrive
from core.outbox.models import DeadLetter
from core.outbox.selectors import STATES, OutboxFilter, outbox_event_list, outbox_status
from core.outbox.services import outbox_replay
from core.pagination import page_of
from core.text import MAX_ID
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

    @extend_schema(
        parameters=[OutboxListFilterSerializer], responses=page_of(OutboxEventSerializer, name="OutboxEventPage")
    )
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


# Deliveries: list, re-drive -------------------------------------------------------------------


class DeliverySerializer(serializers.Serializer):
    event_id = serializers.UUIDField()
    email_id = serializers.IntegerField()
    recipient = serializers.CharField()
    state = serializers.CharField()
    attempts = serializers.IntegerField()
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    provider_message_id = serializers.CharField()
    provider_seen_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    updated_at = serializers.DateTimeField()


class DeliverySelectionSerializer(serializers.Serializer):
    class Meta:
        ref_name = "DeliverySelection"

    email_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID), required=False, max_length=10_000
    )
    event_ids = serializers.ListField(child=serializers.UUIDField(), required=False, max_length=10_000)
    states = serializers.ListField(
        child=serializers.ChoiceField(choices=REDRIVABLE), required=False, default=list(REDRIVABLE)
    )
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)

    def to_selection(self) -> RedriveSelection:
        data = self.validated_data
        return RedriveSelection(
            email_ids=tuple(data.get("email_ids", ())),
            event_ids=tuple(str(i) for i in data.get("event_ids", ())),
            states=tuple(data["states"]) or REDRIVABLE,
            since=data.get("since"),
            until=data.get("until"),
        )


class DeliveryListApi(APIView):
    """Failed and held deliveries (or any state) for ops, newest change first."""

    permission_classes = [IsAdminUser]

    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DeliveryListFilter"

        state = serializers.ChoiceField(
            choices=["sending", "sent", "failed", "suppressed", "cancelled", "retry", "unknown", "held"], required=False
        )
        email_id = serializers.IntegerField(min_value=1, max_value=MAX_ID, required=False)

    @extend_schema(parameters=[FilterSerializer], responses=page_of(DeliverySerializer, name="DeliveryPage"))
    def get(self, request):
        query = self.FilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = Delivery.objects.order_by("-updated_at", "-id")
        if "state" in query.validated_data:
            rows = rows.filter(state=query.validated_data["state"])
        if "email_id" in query.validated_data:
            rows = rows.filter(email_id=query.validated_data["email_id"])
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(DeliverySerializer(page, many=True).data)


class DeliveryRedriveApi(APIView):
    """Send failed and held deliveries again: held ones the provider reported on are marked sent,
    the others go out again with a fresh schedule. Dry run first; audited; idempotent."""

    permission_classes = [IsAdminUser]

    class InputSerializer(DeliverySelectionSerializer):
        class Meta:
            ref_name = "DeliveryRedriveInput"

        dry_run = serializers.BooleanField(required=False, default=False)
        reason = TextField(required=False, default="", allow_blank=True, max_length=1000)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DeliveryRedriveResult"

        retried = serializers.IntegerField()
        settled = serializers.IntegerField()
        unavailable = serializers.IntegerField()
        dry_run = serializers.BooleanField()
        redrive_id = serializers.IntegerField(allow_null=True)
        sample = DeliverySerializer(many=True)

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = deliveries_redrive(
            selection=data.to_selection(),
            actor=request.user.get_username(),
            via="api",
            reason=data.validated_data["reason"],
            dry_run=data.validated_data["dry_run"],
        )
        return Response(
            self.OutputSerializer(
                {
                    "retried": result.retried,
                    "settled": result.settled,
                    "unavailable": result.unavailable,
                    "dry_run": result.dry_run,
                    "redrive_id": result.redrive.pk if result.redrive else None,
                    "sample": result.sample,
                }
            ).data
        )


# Dead letters: list, re-drive, dismiss ----------------------------------------------------------


class DeadLetterSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    received_at = serializers.DateTimeField()
    queue = serializers.CharField()
    reason = serializers.CharField()
    deaths = serializers.IntegerField()
    message_id = serializers.CharField()
    type = serializers.CharField()
    email_id = serializers.IntegerField(allow_null=True)
    detail = serializers.CharField()
    resolution = serializers.CharField()
    resolved_at = serializers.DateTimeField(allow_null=True)
    resolved_by = serializers.CharField()


class DeadLetterListApi(APIView):
    """What the consumers' dead-letter queues received; by default what still waits for ops."""

    permission_classes = [IsAdminUser]

    class FilterSerializer(serializers.Serializer):
        class Meta:
            ref_name = "DeadLetterFilter"

        resolution = serializers.ChoiceField(choices=DeadLetter.Resolution.values, required=False)

    @extend_schema(parameters=[FilterSerializer], responses=page_of(DeadLetterSerializer, name="DeadLetterPage"))
    def get(self, request):
        query = self.FilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = DeadLetter.objects.all()
        if "resolution" in query.validated_data:
            rows = rows.filter(resolution=query.validated_data["resolution"])
        else:
            rows = rows.filter(resolution__in=["parked", "failed"])
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(DeadLetterSerializer(page, many=True).data)


class DeadLetterActionSerializer(serializers.Serializer):
    class Meta:
        ref_name = "DeadLetterAction"

    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID), min_length=1, max_length=1000
    )
    dry_run = serializers.BooleanField(required=False, default=False)
    reason = TextField(required=False, default="", allow_blank=True, max_length=1000)


class DeadLetterActionResultSerializer(serializers.Serializer):
    class Meta:
        ref_name = "DeadLetterActionResult"

    count = serializers.IntegerField()
    skipped = serializers.ListField(child=serializers.CharField())
    dry_run = serializers.BooleanField()


class DeadLetterRedriveApi(APIView):
    """Send recorded dead letters again through the outbox, with their own event ids."""

    permission_classes = [IsAdminUser]

    @extend_schema(request=DeadLetterActionSerializer, responses=DeadLetterActionResultSerializer)
    def post(self, request):
        data = DeadLetterActionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = dead_letters_redrive(
            ids=data.validated_data["ids"],
            actor=request.user.get_username(),
            via="api",
            reason=data.validated_data["reason"],
            dry_run=data.validated_data["dry_run"],
        )
        return Response(
            DeadLetterActionResultSerializer(
                {"count": result.count, "skipped": result.skipped, "dry_run": result.dry_run}
            ).data
        )


class DeadLetterDismissApi(APIView):
    """Mark recorded dead letters dealt with, sending nothing."""

    permission_classes = [IsAdminUser]

    @extend_schema(request=DeadLetterActionSerializer, responses=DeadLetterActionResultSerializer)
    def post(self, request):
        data = DeadLetterActionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ids = data.validated_data["ids"]
        count = (
            len(ids)
            if data.validated_data["dry_run"]
            else dead_letters_dismiss(ids=ids, actor=request.user.get_username())
        )
        return Response(
            DeadLetterActionResultSerializer(
                {"count": count, "skipped": [], "dry_run": data.validated_data["dry_run"]}
            ).data
        )
