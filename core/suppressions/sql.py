"""The suppression table's hand-written SQL, in one place beside its model: the webhook's upsert
(in the transaction that stores the provider's events) and the sender's check (inside its claim,
core.deliveries.store)."""

TABLE = "suppression"
REASONS = ("bounce", "spam_report", "unsubscribe", "manual")
SOURCES = ("webhook", "api", "admin")

# Add suppressions given as a JSON array of {owner_id, address, reason, detail, email_id, at}. An
# address already on the owner's list keeps its first reason and time.
UPSERT_SQL = f"""
    INSERT INTO {TABLE} (owner_id, address, reason, detail, source, email_id, created_at)
    SELECT x.owner_id, lower(x.address), x.reason, left(x.detail, 1000), %s, x.email_id, coalesce(x.at, now())
      FROM jsonb_to_recordset(%s::jsonb)
        AS x(owner_id bigint, address text, reason text, detail text, email_id bigint, at timestamptz)
    ON CONFLICT (owner_id, address) DO NOTHING
    RETURNING id
"""


# The sender's check, inside its claim (core.deliveries.store): `owner` and `recipients` are the
# claim's SQL for the email's owner and its recipients' array, `recipient` for one of them.
# One probe of the unique (owner_id, address) index per recipient: with an empty list, a probe of
# an empty index.
def not_suppressed(*, owner: str, recipient: str) -> str:
    """A condition: `recipient` is not on the list of `owner`."""
    return f"NOT EXISTS (SELECT 1 FROM {TABLE} s WHERE s.owner_id = {owner} AND s.address = lower({recipient}))"


def suppressed_recipients(*, owner: str, recipients: str) -> str:
    """A query: the recipients of `recipients` on the list of `owner`, with the reason and their
    position in `recipients`. Writers insert in that order, as the claim and the cancel do, so two
    of them inserting the same keys take the rows' locks in one order and never deadlock."""
    return f"""
        SELECT r.recipient, s.reason, r.position
          FROM unnest({recipients}::text[]) WITH ORDINALITY AS r(recipient, position)
          JOIN {TABLE} s ON s.owner_id = {owner} AND s.address = lower(r.recipient)
    """
