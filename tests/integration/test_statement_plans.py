"""Statements that run once per message find their rows through an index, on the real Postgres
with a table of realistic size and fresh statistics: a plan that scans the whole table costs
little in a test and grows with the table in production."""

import json
import uuid

import pytest
from django.db import connection

from core.deliveries.store import RECEIPTS_SQL

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


@pytest.mark.parametrize("emails", [1, 100])
def test_the_receipts_update_reads_the_deliveries_it_names_through_the_index(emails):
    # 100,000 deliveries; the reports of one email, or of 100 (a batch of webhook messages).
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO sender_delivery (event_id, recipient, email_id, state, attempts, provider_message_id,
                                         last_error, provider_seen_at)
            SELECT md5(n::text)::uuid, r, n, 'sent', 1, '', '', CASE WHEN n % 2 = 0 THEN now() END
              FROM generate_series(1, 50000) AS n, unnest(ARRAY['ann@example.com', 'bob@example.org']) AS r
            """
        )
        cursor.execute("ANALYZE sender_delivery")
    event_ids = [str(uuid.UUID(int=n)) for n in range(emails)]
    receipts = [
        {"event_id": event_id, "recipient": r, "message_id": "m", "reported_at": "2026-11-30T10:00:00Z"}
        for event_id in event_ids
        for r in ("ann@example.com", "bob@example.org")
    ]
    nodes = plan_nodes(RECEIPTS_SQL, {"receipts": json.dumps(receipts), "event_ids": event_ids})
    scanned = {node["Node Type"] for node in nodes if node.get("Relation Name") == "sender_delivery"}
    assert scanned and "Seq Scan" not in scanned, scanned
