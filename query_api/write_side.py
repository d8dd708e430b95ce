"""The write side's tables that the read side reads in raw SQL (rebuild, reconcile, retention):
their names and the names of the columns it uses, declared once, here.

The read side shares Postgres with the write side, not its modules, so it does not import their
models: when the write side renames a table or a column, this module is the one to change.
"""

from core.outbox import sql as outbox_sql


class Table:
    """A table's name (what it formats as); a subclass declares its columns, each a class attribute
    naming itself in SQL, so a column the table does not declare is an error a type checker sees."""

    name: str

    def __str__(self) -> str:
        return self.name


class _SentEmail(Table):
    name = "emails_sentemail"
    id = "id"
    owner = "sender_id"
    from_email = "from_email"
    template_id = "template_id"
    template_name = "template_name"
    subject = "subject"
    created = "created"
    send_at = "send_at"


class _Recipient(Table):
    name = "emails_sentemailrecipient"
    id = "id"
    email_id = "email_id"
    address = "address"


class _Delivery(Table):
    name = "sender_delivery"
    email_id = "email_id"
    event_id = "event_id"
    state = "state"
    recipient = "recipient"
    provider_message_id = "provider_message_id"
    last_error = "last_error"
    attempts = "attempts"
    created_at = "created_at"
    updated_at = "updated_at"


class _ProviderEvent(Table):
    name = "webhook_provider_event"
    email_id = "email_id"
    provider_event_id = "provider_event_id"
    request_event_id = "request_event_id"
    recipient = "recipient"
    status = "status"
    provider_message_id = "provider_message_id"
    reason = "reason"
    reported_at = "reported_at"
    received_at = "received_at"


class _Outbox(Table):  # core owns the outbox and its statements (core.outbox.sql)
    name = outbox_sql.TABLE
    id = "id"


SENT_EMAIL = _SentEmail()
RECIPIENT = _Recipient()
DELIVERY = _Delivery()
PROVIDER_EVENT = _ProviderEvent()
OUTBOX = _Outbox()
