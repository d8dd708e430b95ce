"""The write side's tables that the read side reads in raw SQL (rebuild, reconcile, retention):
their names and the names of the columns it uses, declared once, here.

The read side shares Postgres with the write side, not its modules, so it does not import their
models: when the write side renames a table or a column, this module is the one to change.
"""

from core.outbox import sql as outbox_sql


class Table:
    """A table's name (what it formats as) and its columns, each an attribute naming itself in SQL."""

    def __init__(self, name: str, **columns: str):
        self.name = name
        self.__dict__.update(columns)

    def __str__(self) -> str:
        return self.name


SENT_EMAIL = Table("emails_sentemail", id="id", owner="sender_id", from_email="from_email",
                   template_id="template_id", template_name="template_name", subject="subject", created="created")
RECIPIENT = Table("emails_sentemailrecipient", id="id", email_id="email_id", address="address")
DELIVERY = Table("sender_delivery", email_id="email_id", event_id="event_id", state="state", recipient="recipient",
                 provider_message_id="provider_message_id", last_error="last_error", attempts="attempts",
                 created_at="created_at", updated_at="updated_at")
PROVIDER_EVENT = Table("webhook_provider_event", email_id="email_id", provider_event_id="provider_event_id",
                       request_event_id="request_event_id", recipient="recipient", status="status",
                       provider_message_id="provider_message_id", reason="reason", reported_at="reported_at",
                       received_at="received_at")
OUTBOX = Table(outbox_sql.TABLE, id="id")  # core owns the outbox and its statements (core.outbox.sql)
