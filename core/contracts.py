"""The message contract every service shares: event names, payloads and their schema versions.

Events are frozen dataclasses with no framework imports. `to_dict()` gives the JSON payload the
outbox stores and the relay publishes; `from_dict()` reads it back and ignores keys it does not
know, so additive changes within a version never break a consumer. A breaking change is a new
version that consumers read side by side. The event id is the AMQP message_id and the dedupe key
everywhere downstream.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from functools import cache
from typing import ClassVar, TypeAlias


class ContractError(ValueError):
    """A payload that does not match the contract (wrong type, unknown version, missing key)."""


@cache
def _field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


@cache
def _required_names(cls) -> tuple[str, ...]:
    """The fields without a default: fields added later within a version have one."""
    return tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)


@dataclass(frozen=True, kw_only=True)
class Event:
    TYPE: ClassVar[str]
    VERSION: ClassVar[int]

    event_id: str
    correlation_id: str
    occurred_at: str  # ISO 8601, UTC

    def to_dict(self) -> dict:
        data = {"type": self.TYPE, "schema_version": self.VERSION}
        # A class is hashable; mypy checks the instances' __hash__ against Hashable instead.
        for name in _field_names(type(self)):  # type: ignore[arg-type]
            value = getattr(self, name)
            # JSON has lists, not tuples (tuples keep the events hashable and frozen). Values are
            # JSON scalars or tuples of them, so no deep copy is needed.
            data[name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: dict):
        if data.get("type") != cls.TYPE:
            raise ContractError(f"expected type {cls.TYPE!r}, got {data.get('type')!r}")
        if data.get("schema_version") != cls.VERSION:
            raise ContractError(f"{cls.TYPE}: unsupported schema_version {data.get('schema_version')!r}")
        # Fields added later within a version have defaults, so older payloads still read.
        missing = [name for name in _required_names(cls) if name not in data]  # type: ignore[arg-type]
        if missing:
            raise ContractError(f"{cls.TYPE}: missing {', '.join(missing)}")
        values: dict = {
            name: tuple(value) if isinstance(value := data[name], list) else value
            for name in _field_names(cls)  # type: ignore[arg-type]
            if name in data
        }
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class EmailRequested(Event):
    """An accepted email, with everything a sender needs to deliver it to every recipient."""

    TYPE: ClassVar[str] = "email.requested"
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str] = "sent_email"

    email_id: int
    owner_id: int
    template_id: int | None
    from_email: str
    reply_to: str | None
    recipients: tuple[str, ...]
    subject: str
    body_html: str
    template_name: str = ""  # added within version 1
    # Added within version 1: the time it was scheduled for (ISO 8601, UTC), "" when sent at once.
    # The relay publishes the event at that time, not before.
    send_at: str = ""


@dataclass(frozen=True, kw_only=True)
class EmailScheduled(Event):
    """An email accepted for a later time: what the read model shows about it (not its body)
    until its `email.requested` is published (for its hand-off, before `send_at`). Written with
    the request, in the same statement, and published at once. No sender consumes it."""

    TYPE: ClassVar[str] = "email.scheduled"
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str] = "sent_email"

    email_id: int
    request_event_id: str  # the email.requested event that goes out for its hand-off
    owner_id: int
    from_email: str
    template_id: int | None
    template_name: str
    subject: str
    recipients: tuple[str, ...]
    requested_at: str  # when it was accepted, ISO 8601
    send_at: str  # ISO 8601, UTC


@dataclass(frozen=True, kw_only=True)
class EmailCancelled(Event):
    """The owner cancelled the email before any sender claimed it: none of its recipients will
    get it. Terminal."""

    TYPE: ClassVar[str] = "email.cancelled"
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str] = "sent_email"

    email_id: int
    request_event_id: str
    recipients: tuple[str, ...]
    cancelled_by: int  # the user id


@dataclass(frozen=True, kw_only=True)
class EmailSent(Event):
    """The provider accepted the email for these recipients (one provider call)."""

    TYPE: ClassVar[str] = "email.sent"
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str] = "sent_email"

    email_id: int
    request_event_id: str  # the email.requested event this answers
    recipients: tuple[str, ...]
    provider: str
    provider_message_id: str
    attempt: int


@dataclass(frozen=True, kw_only=True)
class EmailFailed(Event):
    """The email will not be delivered to these recipients: the provider refused it, or the
    sender gave up after its last attempt."""

    TYPE: ClassVar[str] = "email.failed"
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str] = "sent_email"

    email_id: int
    request_event_id: str
    recipients: tuple[str, ...]
    provider: str
    reason: str
    permanent: bool  # False: transient errors until the attempts ran out
    attempt: int
    # Added within version 1: what the request said (all but its body), for a request that never
    # reached the broker (refused as too large, say): the read side learns of the email from this
    # event alone. Empty otherwise.
    owner_id: int | None = None
    from_email: str = ""
    template_id: int | None = None
    template_name: str = ""
    subject: str = ""
    requested_at: str = ""


@dataclass(frozen=True, kw_only=True)
class EmailSuppressed(Event):
    """These recipients are on the owner's suppression list: the sender's claim recorded them as
    suppressed and never called the provider for them. `reasons` pairs with `recipients`, one
    each (bounce, spam_report, unsubscribe, manual)."""

    TYPE: ClassVar[str] = "email.suppressed"
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str] = "sent_email"

    email_id: int
    request_event_id: str
    recipients: tuple[str, ...]
    reasons: tuple[str, ...]

    def reason_of(self) -> dict[str, str]:
        """recipient -> reason; raises ContractError unless there is one reason per recipient."""
        if len(self.reasons) != len(self.recipients):
            raise ContractError(f"{self.TYPE}: {len(self.recipients)} recipients but {len(self.reasons)} reasons")
        return dict(zip(self.recipients, self.reasons, strict=True))


@dataclass(frozen=True, kw_only=True)
class EmailDeliveryStatus(Event):
    """What the provider reported about one recipient (SendGrid's Event Webhook): processed,
    deferred, delivered, bounced, dropped, opened, clicked, spam_reported, unsubscribed."""

    TYPE: ClassVar[str] = "email.delivery_status"
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str] = "sent_email"

    email_id: int
    request_event_id: str
    recipient: str
    status: str
    provider: str
    provider_event_id: str
    provider_message_id: str
    reason: str
    reported_at: str  # the provider's timestamp, ISO 8601


@dataclass(frozen=True, kw_only=True)
class EmailDeliveryStatuses(Event):
    """What one Event Webhook post reported about one email (its aggregate): each item is a whole
    `email.delivery_status` payload with its own event id. One outbox row, one message and one
    delivery instead of one per status; consumers apply the items as if they came one by one
    (deduplicated by the items' event ids), and accept items of several emails (as rows written
    before the email became the aggregate hold)."""

    TYPE: ClassVar[str] = "email.delivery_statuses"
    VERSION: ClassVar[int] = 1
    AGGREGATE: ClassVar[str] = "sent_email"

    statuses: tuple[dict, ...]

    def items(self) -> list[EmailDeliveryStatus]:
        """The statuses as events; raises ContractError for an item that breaks the contract."""
        if not isinstance(self.statuses, tuple) or not all(isinstance(item, dict) for item in self.statuses):
            raise ContractError(f"{self.TYPE}: statuses must be a list of objects")
        return [EmailDeliveryStatus.from_dict(item) for item in self.statuses]


# The events about one email, each naming it: every type but the batch of statuses.
EmailEvent: TypeAlias = (
    EmailRequested | EmailScheduled | EmailCancelled | EmailSent | EmailFailed | EmailSuppressed | EmailDeliveryStatus
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        EmailRequested,
        EmailScheduled,
        EmailCancelled,
        EmailSent,
        EmailFailed,
        EmailSuppressed,
        EmailDeliveryStatus,
        EmailDeliveryStatuses,
    )
}


def event_from_dict(data: dict) -> Event:
    """Read any known event; raises ContractError for an unknown type or version."""
    try:
        event_class = EVENT_TYPES[data["type"]]
    except (KeyError, TypeError):
        raise ContractError(f"unknown event type {data.get('type') if isinstance(data, dict) else data!r}") from None
    return event_class.from_dict(data)
