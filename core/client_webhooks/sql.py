"""The client webhooks' hand-written SQL, in one place beside its models: what the projector
runs to queue messages in its batch transaction, and the notifier's claim and its records of each
attempt. Statements take psycopg2 parameters (a plain psycopg2 cursor or a Django one).
"""

from __future__ import annotations

ENDPOINT = "client_webhook_endpoint"
MESSAGE = "client_webhook_message"
ATTEMPT = "client_webhook_attempt"

# The projector -------------------------------------------------------------------------------


def owners_with_endpoints(written: str) -> str:
    """The end of a statement whose CTE `written` returns `owner_id`s: those of them with an enabled
    endpoint. The projector ends the statement that writes its rows with it, so a batch whose
    owners have no endpoint (every batch, on a platform where nobody registered one) costs no
    statement more and returns no row."""
    return (
        f"SELECT DISTINCT w.owner_id FROM {written} w "
        f"WHERE EXISTS (SELECT 1 FROM {ENDPOINT} e WHERE e.enabled AND e.owner_id = w.owner_id)"
    )


# The enabled endpoints of the batch's owners that have one: an index scan of
# client_webhook_enabled_idx, which holds only enabled endpoints.
ENDPOINTS_FOR_OWNERS_SQL = f"""
    SELECT id, owner_id, event_types FROM {ENDPOINT} WHERE enabled AND owner_id = ANY(%s::bigint[])
"""
# Many messages in one statement, from a JSON array of `message_row` dicts; due at once.
INSERT_MESSAGES_SQL = f"""
    INSERT INTO {MESSAGE} (id, endpoint_id, email_id, sequence, event_type, payload, state, attempts,
                           next_attempt_at, last_error, created_at)
    SELECT id, endpoint_id, email_id, sequence, event_type, payload, 'pending', 0, now(), '', now()
      FROM jsonb_to_recordset(%s::jsonb)
        AS given(id uuid, endpoint_id bigint, email_id bigint, sequence integer, event_type text, payload jsonb)
    ON CONFLICT (id) DO NOTHING
"""
NOTIFY_SQL = "SELECT pg_notify(%s, '')"

# The notifier --------------------------------------------------------------------------------

# Due messages of enabled endpoints, oldest due first, skipping endpoints whose every delivery
# slot is busy (so one endpoint's backlog cannot fill a claim) and rows another notifier holds.
CLAIM_SQL = f"""
    SELECT m.id::text, m.endpoint_id, e.url, e.secret,
           CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret ELSE '' END,
           m.payload::text, m.attempts
      FROM {MESSAGE} m JOIN {ENDPOINT} e ON e.id = m.endpoint_id
     WHERE m.state = 'pending' AND m.next_attempt_at <= now() AND e.enabled
       AND NOT (m.endpoint_id = ANY(%(busy)s::bigint[]))
     ORDER BY m.next_attempt_at
     LIMIT %(limit)s
       FOR UPDATE OF m SKIP LOCKED
"""
# A claimed message is leased: due again only if its notifier dies before it records the attempt.
LEASE_SQL = f"""
    UPDATE {MESSAGE} SET next_attempt_at = now() + %(lease)s * interval '1 second' WHERE id = ANY(%(ids)s::uuid[])
"""
# A batch of attempts, recorded in a few statements whatever its size: the log rows, then each
# message's outcome ("delivered", "failed", or "retry" after `wait` seconds). A message replayed
# meanwhile (pending again, attempts reset) still counts the attempt.
ATTEMPTS_SQL = f"""
    INSERT INTO {ATTEMPT} (message_id, attempted_at, status_code, duration_ms, response, error)
    SELECT id, attempted_at, status_code, duration_ms, response, error
      FROM jsonb_to_recordset(%s::jsonb) AS given(id uuid, attempted_at timestamptz, status_code integer,
                                                  duration_ms integer, response text, error text)
     WHERE EXISTS (SELECT 1 FROM {MESSAGE} m WHERE m.id = given.id)  -- its endpoint may be deleted meanwhile
"""
OUTCOMES_SQL = f"""
    UPDATE {MESSAGE} m
       SET state = CASE WHEN g.outcome = 'retry' THEN m.state ELSE g.outcome END,
           attempts = m.attempts + 1,
           last_error = g.error,
           next_attempt_at = CASE WHEN g.outcome = 'retry' THEN now() + g.wait * interval '1 second'
                                  ELSE m.next_attempt_at END,
           finished_at = CASE WHEN g.outcome = 'retry' THEN NULL ELSE now() END
      FROM jsonb_to_recordset(%s::jsonb) AS g(id uuid, outcome text, error text, wait float8)
     WHERE m.id = g.id AND m.state = 'pending'
"""
ENDPOINTS_ANSWERED_SQL = f"""
    UPDATE {ENDPOINT} SET failing_since = NULL WHERE id = ANY(%s::bigint[]) AND failing_since IS NOT NULL
"""
# A failure starts (or continues) an endpoint's failing streak; one that has lasted the whole
# window disables the endpoint, with the reason its owner reads in the API.
ENDPOINTS_FAILED_SQL = f"""
    UPDATE {ENDPOINT} SET failing_since = now() WHERE id = ANY(%s::bigint[]) AND failing_since IS NULL
"""
DISABLE_SQL = f"""
    UPDATE {ENDPOINT} e
       SET enabled = false, disabled_at = now(),
           disabled_reason = 'Every delivery failed since ' || to_char(e.failing_since AT TIME ZONE 'UTC',
                             'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ' (' || %(window)s || '); the last: ' || g.error
      FROM jsonb_to_recordset(%(failed)s::jsonb) AS g(id bigint, error text)
     WHERE e.id = g.id AND e.enabled AND e.failing_since <= now() - %(seconds)s * interval '1 second'
    RETURNING e.id
"""
# A disabled endpoint's pending messages wait, out of the claim's way (its partial index would
# otherwise lead every claim through them), until it is enabled again.
PARKED_UNTIL = "9999-12-31T00:00:00+00:00"
PARK_SQL = f"""
    UPDATE {MESSAGE} SET next_attempt_at = '{PARKED_UNTIL}' WHERE endpoint_id = ANY(%s::bigint[]) AND state = 'pending'
"""
UNPARK_SQL = f"""
    UPDATE {MESSAGE} SET next_attempt_at = now()
     WHERE endpoint_id = %s AND state = 'pending' AND next_attempt_at >= '{PARKED_UNTIL}'
"""
# The database cascades to the messages and their attempts (migration 0003).
DELETE_ENDPOINT_SQL = f"DELETE FROM {ENDPOINT} WHERE id = %s"
BACKLOG_SQL = f"""
    SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)), 0)
      FROM {MESSAGE} WHERE state = 'pending' AND next_attempt_at <= now()
"""
