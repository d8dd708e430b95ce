"""Retention: deliveries, processed-event ids and provider events are pruned on schedules, and
only where nothing that deduplicates can still need them."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.module_loading import import_string

from command_api.webhooks.models import ProviderEvent
from command_api.webhooks.services import provider_events_prune
from core.deliveries.models import Delivery
from core.deliveries.services import deliveries_prune
from core.outbox.models import DeadLetter, OutboxEvent
from query_api.models import ProcessedEvent
from query_api.retention import processed_events_prune

pytestmark = pytest.mark.django_db
OLD = timezone.now() - timedelta(days=400)


def delivery(state="sent", *, event_id=None, old=True) -> Delivery:
    row = Delivery.objects.create(
        event_id=event_id or uuid.uuid4(), recipient="ann@example.com", email_id=1, state=state
    )
    if old:
        Delivery.objects.filter(pk=row.pk).update(updated_at=OLD)
    return row


def test_finished_old_deliveries_go_unless_their_request_can_come_back():
    gone = delivery("sent")
    failed = delivery("failed")
    recent = delivery("sent", old=False)
    retrying = delivery("retry")
    held = delivery("held")
    replayable = delivery("sent")
    OutboxEvent.objects.create(
        id=replayable.event_id,
        aggregatetype="sent_email",
        aggregateid="1",
        type="email.requested",
        payload={"recipients": ["ann@example.com"]},
    )
    parked = delivery("failed")
    DeadLetter.objects.create(
        queue="q",
        reason="delivery_limit",
        died_at=OLD,
        message_id=str(parked.event_id),
        type="email.requested",
        body="{}",
        resolution="failed",
    )
    assert deliveries_prune(dry_run=True) == 2
    assert deliveries_prune() == 2
    assert set(Delivery.objects.values_list("pk", flat=True)) == {
        recent.pk,
        retrying.pk,
        held.pk,
        replayable.pk,
        parked.pk,
    }
    assert not Delivery.objects.filter(pk__in=[gone.pk, failed.pk]).exists()


def test_processed_ids_go_after_their_retention_unless_the_event_can_be_replayed():
    old, recent, replayable = (ProcessedEvent.objects.create(event_id=uuid.uuid4()) for _ in range(3))
    ProcessedEvent.objects.filter(pk__in=[old.pk, replayable.pk]).update(processed_at=OLD)
    OutboxEvent.objects.create(
        id=replayable.event_id, aggregatetype="a", aggregateid="1", type="email.sent", payload={}
    )
    assert processed_events_prune() == 1
    assert set(ProcessedEvent.objects.values_list("pk", flat=True)) == {recent.pk, replayable.pk}


def test_provider_events_go_after_their_retention_never_within_sendgrids_retries():
    def event(days_ago):
        row = ProviderEvent.objects.create(
            provider_event_id=str(uuid.uuid4()),
            email_id=1,
            request_event_id=uuid.uuid4(),
            recipient="a@example.com",
            status="delivered",
            reported_at=timezone.now(),
            payload={},
        )
        ProviderEvent.objects.filter(pk=row.pk).update(received_at=timezone.now() - timedelta(days=days_ago))
        return row

    old, recent, yesterday = event(400), event(10), event(1)
    assert ProviderEvent.objects.filter(pk__in=[old.pk, recent.pk]).count() == 2
    assert provider_events_prune() == 1
    assert provider_events_prune(older_than_days=0) == 1  # never younger than two days
    assert set(ProviderEvent.objects.values_list("pk", flat=True)) == {yesterday.pk}


def test_the_chunks_of_a_long_backlog_all_go(settings):
    import core.retention

    settings.DELIVERY_RETENTION_DAYS = 30
    for _ in range(7):
        delivery("sent")
    chunk, core.retention.CHUNK = core.retention.CHUNK, 3
    try:
        seen = []
        assert deliveries_prune(progress=seen.append) == 7 and seen == [3, 3, 1]
    finally:
        core.retention.CHUNK = chunk


@pytest.mark.parametrize(
    "name", ["deliveries_prune", "processed_events_prune", "provider_events_prune", "outbox_purge_published"]
)
def test_each_prune_is_scheduled_daily(name):
    from django_q.models import Schedule

    job = Schedule.objects.get(name=name)
    assert job.schedule_type == "D" and job.repeats == -1
    assert callable(import_string(job.func))
