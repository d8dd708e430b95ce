from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from core.accounts.models import ApiKeyScope
from core.errors import field_error
from core.pagination import page_of
from core.text import parse_id, text_problem
from query_api import selectors
from query_api.projection import OVERALL


class LogPagination(CursorPagination):
    ordering = ("-created", "-id")
    page_size_query_param = "page_size"

    def __init__(self):
        self.page_size = settings.QUERY_PAGE_SIZE
        self.max_page_size = settings.QUERY_MAX_PAGE_SIZE

    def decode_cursor(self, request):
        """DRF's cursor, with its position checked: it comes from the client, and is compared to
        the `created` column, so anything but a date-time is refused as an invalid cursor."""
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                valid = "\x00" not in cursor.position and parse_datetime(cursor.position) is not None
            except ValueError:
                valid = False
            if not valid:
                raise NotFound(self.invalid_cursor_message)
        return cursor


class RecipientStatusSerializer(serializers.Serializer):
    email = serializers.EmailField()
    status = serializers.CharField()
    at = serializers.DateTimeField(required=False)
    provider_message_id = serializers.CharField(required=False)
    reason = serializers.CharField(required=False)


class SentEmailLogSerializer(serializers.Serializer):
    class Meta:
        ref_name = "SentEmailLog"

    id = serializers.IntegerField()
    template = serializers.IntegerField(source="template_id", allow_null=True)
    template_name = serializers.CharField()
    subject = serializers.CharField()
    from_email = serializers.CharField()
    created = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=OVERALL)
    last_event_at = serializers.DateTimeField(allow_null=True)
    status_seq = serializers.IntegerField(
        help_text="The email's status changes so far: the highest sequence number its status webhooks carry."
    )
    send_at = serializers.DateTimeField(allow_null=True, help_text="A scheduled send's time; null: sent at once.")
    recipients = serializers.ListField(child=serializers.CharField())
    recipient_status = serializers.SerializerMethodField()

    @extend_schema_field(RecipientStatusSerializer(many=True))
    def get_recipient_status(self, row) -> list[dict]:
        # Stored as JSON already (ISO times): a serializer per recipient would cost more than
        # the whole query (measured in bench/query.py).
        queued = {"status": "queued", "at": row.created.isoformat() if row.created else None}
        return [{"email": address, **row.recipient_status.get(address, queued)} for address in row.recipients]


class HistorySerializer(serializers.Serializer):
    type = serializers.CharField()
    recipient = serializers.CharField()
    status = serializers.CharField()
    at = serializers.DateTimeField()
    detail = serializers.CharField()


def _parse_bound(name: str, raw: str, *, end: bool) -> datetime:
    """An ISO 8601 date or date-time. A date is the whole day: from its start, or up to its end.
    Raises a 400 naming `name` for anything else: a date that does not exist, a UTC offset out of
    range, a bound past the calendar's end."""
    try:
        moment = _bound(raw, end=end)
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise field_error(name, f"{raw!r} is not an ISO 8601 date or date-time within the calendar.")
    return moment


def _bound(raw: str, *, end: bool) -> datetime | None:
    moment = parse_datetime(raw.replace(" ", "+")) if "T" in raw or ":" in raw else None
    if moment is None:
        day = parse_date(raw)
        if day is None:
            return None
        moment = datetime.combine(day + timedelta(days=1) if end else day, time.min)
        return timezone.make_aware(moment, timezone.get_default_timezone())
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    moment.astimezone(UTC)  # an offset that takes it past the calendar raises here
    # A date-time end is inclusive: the selector's bound is exclusive.
    return moment + timedelta(microseconds=1) if end else moment


class SentEmailListApi(APIView):
    api_key_scope = ApiKeyScope.READ

    @extend_schema(
        parameters=[
            OpenApiParameter("recipient", str, many=True, description="Repeatable: emails to any of these."),
            OpenApiParameter("start_time", str, description="ISO 8601 date or date-time, inclusive."),
            OpenApiParameter(
                "end_time", str, description="ISO 8601 date or date-time, inclusive (a date: the whole day)."
            ),
            OpenApiParameter("status", str, many=True, enum=OVERALL),
            OpenApiParameter("template", int, many=True),
            OpenApiParameter("page_size", int),
        ],
        responses=page_of(SentEmailLogSerializer, name="SentEmailLogPage", cursor=True),
        operation_id="v1_emails_sent_email_list",
    )
    def get(self, request):
        params = request.query_params
        start = _parse_bound("start_time", params["start_time"], end=False) if params.get("start_time") else None
        end = _parse_bound("end_time", params["end_time"], end=True) if params.get("end_time") else None
        if start and end and start >= end:
            raise field_error("end_time", "end_time must not be before start_time.")
        statuses = params.getlist("status")
        if bad := [s for s in statuses if s not in OVERALL]:
            raise field_error("status", f"{bad[0]!r} is not one of {', '.join(OVERALL)}.")
        templates = [parse_id(t) for t in params.getlist("template")]
        if None in templates:
            bad = params.getlist("template")[templates.index(None)]
            raise field_error("template", f"{bad!r} is not a template id.")
        recipients = [r.strip() for r in params.getlist("recipient") if r.strip()]
        if problems := [problem for r in recipients if (problem := text_problem(r, single_line=True))]:
            raise field_error("recipient", problems[0])
        if len(recipients) > 100:
            raise field_error("recipient", "At most 100 recipients per query.")
        rows = selectors.sent_email_log_list(
            owner_id=request.user.pk,
            recipients=recipients,
            start=start,
            end=end,
            statuses=statuses,
            template_ids=templates,
        )
        paginator = LogPagination()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(SentEmailLogSerializer(page, many=True).data)


class SentEmailDetailApi(APIView):
    api_key_scope = ApiKeyScope.READ

    class OutputSerializer(SentEmailLogSerializer):
        class Meta:
            ref_name = "SentEmailLogDetail"

        history = HistorySerializer(many=True)

    @extend_schema(responses=OutputSerializer)
    def get(self, request, email_id: int):
        row, history = selectors.sent_email_log_get(owner_id=request.user.pk, email_id=email_id)
        # The shape OutputSerializer declares: the row's fields, then its history.
        return Response({**SentEmailLogSerializer(row).data, "history": HistorySerializer(history, many=True).data})
