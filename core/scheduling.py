"""The one rule for a scheduled send's hand-off: its request is published, and handed to the
provider to hold until `send_at`, SCHEDULED_HANDOFF_SECONDS before `send_at`. The command API
writes it as the request's outbox `not_before`; the read side dates `queued` by it."""

from datetime import datetime, timedelta


def handoff_at(send_at: datetime) -> datetime:
    from django.conf import settings

    return send_at - timedelta(seconds=settings.SCHEDULED_HANDOFF_SECONDS)
