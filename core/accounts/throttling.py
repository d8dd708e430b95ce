"""Each API key's own rate limit: requests per minute, set on the key (`rate_limit_per_minute`).

A fixed one-minute window counted in Postgres by one atomic statement (an upsert of the key's
counter row, on the database's clock), so every process and pod counts the same window and two
concurrent requests can never both take the last slot, which a read-then-write cache counter
allows. Requests with a user token, or none, pass without a query.
"""

from functools import cache

from django.db import connection
from rest_framework.throttling import BaseThrottle

from core.accounts.models import ApiKey, ApiKeyWindow
from core.prepared import Prepared


@cache
def _hit() -> Prepared:
    table = ApiKeyWindow._meta.db_table
    return Prepared(
        "api_key_window_hit",
        f"INSERT INTO {table} AS w (key_id, window_start, count) "
        "VALUES (%(key)s, date_trunc('minute', clock_timestamp()), 1) "
        "ON CONFLICT (key_id) DO UPDATE SET "
        "count = CASE WHEN w.window_start = EXCLUDED.window_start THEN w.count + 1 ELSE 1 END, "
        "window_start = EXCLUDED.window_start "
        "RETURNING count, ceil(extract(epoch FROM w.window_start + interval '1 minute' - clock_timestamp()))",
    )


class ApiKeyRateThrottle(BaseThrottle):
    """429 with Retry-After (the seconds left in the window) once a key has made its
    `rate_limit_per_minute` requests in the current minute."""

    def __init__(self) -> None:
        self.retry_after: float | None = None

    def allow_request(self, request, view) -> bool:
        key = request.auth
        if not isinstance(key, ApiKey):
            return True
        with connection.cursor() as cursor:
            _hit().execute(cursor, {"key": key.pk})
            count, seconds_left = cursor.fetchone()
        if count <= key.rate_limit_per_minute:
            return True
        self.retry_after = max(1.0, float(seconds_left))
        return False

    def wait(self) -> float | None:
        return self.retry_after
