"""The client webhooks' hand-written SQL, in one place beside its models: what the projector
runs to queue messages in its batch transaction, and the notifier's claim and its records of each
attempt. Statements take psycopg2 parameters (a plain psycopg2 cursor or a Django one).
"""

from __future__ import annotations

ENDPOINT = "client_webhook_endpoint"
MESSAGE = "client_webhook_message"
ATTEMPT = "client_webhook_attempt"

# The projector -------------------------------------------------------------------------------

# The enabled endpoints of a batch's owners: one index scan of client_webhook_enabled_idx, which
# holds only enabled endpoints (none at all on a platform where nobody registered one).
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
ATTEMPT_SQL = f"""
    INSERT INTO {ATTEMPT} (message_id, attempted_at, status_code, duration_ms, response, error)
    VALUES (%(id)s, %(attempted_at)s, %(status_code)s, %(duration_ms)s, %(response)s, %(error)s)
"""
# Each outcome counts the attempt; a replay meanwhile (state pending, attempts reset) is kept.
DELIVERED_SQL = f"""
    UPDATE {MESSAGE} SET state = 'delivered', attempts = attempts + 1, last_error = '', finished_at = now()
     WHERE id = %(id)s AND state = 'pending'
"""
RETRY_SQL = f"""
    UPDATE {MESSAGE}
       SET attempts = attempts + 1, last_error = %(error)s,
           next_attempt_at = now() + %(wait)s * interval '1 second'
     WHERE id = %(id)s AND state = 'pending'
"""
FAILED_SQL = f"""
    UPDATE {MESSAGE} SET state = 'failed', attempts = attempts + 1, last_error = %(error)s, finished_at = now()
     WHERE id = %(id)s AND state = 'pending'
"""
ENDPOINT_ANSWERED_SQL = f"UPDATE {ENDPOINT} SET failing_since = NULL WHERE id = %s AND failing_since IS NOT NULL"
# A failure starts (or continues) the endpoint's failing streak; one that has lasted the whole
# window disables the endpoint, with the reason its owner reads in the API.
ENDPOINT_FAILED_SQL = f"""
    UPDATE {ENDPOINT} SET failing_since = COALESCE(failing_since, now()) WHERE id = %s AND failing_since IS NULL
"""
DISABLE_SQL = f"""
    UPDATE {ENDPOINT}
       SET enabled = false, disabled_at = now(),
           disabled_reason = 'Every delivery failed since ' || to_char(failing_since AT TIME ZONE 'UTC',
                             'YYYY-MM-DD"T"HH24:MI:SS"Z"') || ' (' || %(window)s || '); the last: ' || %(error)s
     WHERE id = %(id)s AND enabled AND failing_since <= now() - %(seconds)s * interval '1 second'
    RETURNING id
"""
BACKLOG_SQL = f"""
    SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)), 0)
      FROM {MESSAGE} WHERE state = 'pending' AND next_attempt_at <= now()
"""
