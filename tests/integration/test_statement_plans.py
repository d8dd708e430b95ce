"""Statements that run once per message find their rows through an index, on the real Postgres
with a table of realistic size and fresh statistics: a plan that scans the whole table costs
little in a test and grows with the table in production."""

import json
import uuid

import pytest
from django.db import connection

from core.deliveries.store import RECEIPTS_SQL, receipts_parameters

pytestmark = pytest.mark.django_db


def plan_nodes(sql: str, params) -> list[dict]:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        (document,) = cursor.fetchone()
    if isinstance(document, str):
        document = json.loads(document)
    nodes, todo = [], [document[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo += node.get("Plans", [])
    return nodes


@pytest.mark.parametrize("half_unreported", [True, False])
@pytest.mark.parametrize("emails", [1, 100, 500])
def test_the_receipts_update_looks_each_delivery_up_through_the_index(emails, half_unreported):
    # 100,000 deliveries, every other one without a report yet, or all reported when the
    # statistics were taken (then the deliveries reported on, just claimed, look rare to the
    # planner); the reports of one email, of 100, or of 500 (SendGrid's largest post: 1,000 events).
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO sender_delivery (event_id, recipient, email_id, state, attempts, provider_message_id,
                                         last_error, provider_seen_at)
            SELECT md5(n::text)::uuid, r, n, 'sent', 1, '', '', CASE WHEN n %% 2 = 0 OR NOT %s THEN now() END
              FROM generate_series(1, 50000) AS n, unnest(ARRAY['ann@example.com', 'bob@example.org']) AS r
            """,
            [half_unreported],
        )
        cursor.execute("ANALYZE sender_delivery")
        cursor.execute(
            """
            INSERT INTO sender_delivery (event_id, recipient, email_id, state, attempts, provider_message_id,
                                         last_error)
            SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(n), 12, '0'))::uuid, r, n, 'sending', 1, '', ''
              FROM generate_series(0, %s - 1) AS n, unnest(ARRAY['ann@example.com', 'bob@example.org']) AS r
            """,
            [emails],
        )
    reports = [
        {"event_id": str(uuid.UUID(int=n)), "recipient": r, "message_id": "m", "reported_at": "2026-11-30T10:00:00Z"}
        for n in range(emails)
        for r in ("ann@example.com", "bob@example.org")
        for _ in ("processed", "delivered")
    ]
    nodes = plan_nodes(RECEIPTS_SQL, receipts_parameters(reports))
    scanned = {node["Node Type"] for node in nodes if node.get("Relation Name") == "sender_delivery"}
    assert scanned and "Seq Scan" not in scanned, scanned
    # The reports drive the lookups: never read again for each delivery (a nested loop with the
    # reports inside runs in the square of their number).
    for loop in (node for node in nodes if node["Node Type"] == "Nested Loop"):
        inner = plan_nodes_under(loop["Plans"][1])
        assert not any(node["Node Type"] == "Function Scan" for node in inner), loop


def plan_nodes_under(node: dict) -> list[dict]:
    nodes, todo = [], [node]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo += node.get("Plans", [])
    return nodes


# Columns that lead a composite index (or are the primary key), whose single-column indexes were
# dropped because every send or provider event paid an insert into them (command_api's emails 0003
# and webhooks 0003): a model change that made one again fails here.
COVERED_COLUMNS = [
    ("emails_sentemail", "sender_id"),
    ("emails_sentemailrecipient", "email_id"),
    ("webhook_provider_event", "provider_event_id"),
]


def test_no_single_column_index_repeats_one_a_composite_index_or_the_primary_key_covers():
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT t.relname, a.attname, c.relname
              FROM pg_index i
              JOIN pg_class c ON c.oid = i.indexrelid
              JOIN pg_class t ON t.oid = i.indrelid
              JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]
             WHERE i.indnatts = 1 AND i.indpred IS NULL AND NOT i.indisprimary AND NOT i.indisunique
               AND (t.relname, a.attname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
            """,
            [[table for table, _ in COVERED_COLUMNS], [column for _, column in COVERED_COLUMNS]],
        )
        assert cursor.fetchall() == []


@pytest.mark.parametrize(
    ("sql", "index"),
    [
        ("SELECT id FROM emails_sentemail WHERE sender_id = %s", "sent_email_sender_created_idx"),
        ("SELECT id FROM emails_sentemail WHERE sender_id = %s ORDER BY created DESC", "sent_email_sender_created_idx"),
        ("SELECT address FROM emails_sentemailrecipient WHERE email_id = %s", "sent_email_recipient_uniq"),
    ],
)
def test_lookups_by_sender_and_by_email_still_have_an_index(sql, index):
    # With sequential scans priced out, a plan without a usable index would still scan the table.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    nodes = plan_nodes(sql, [1])
    assert [node.get("Index Name") for node in nodes if "Index Name" in node] == [index]
    assert not any(node["Node Type"] == "Seq Scan" for node in nodes)
