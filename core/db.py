"""Postgres connections outside Django's ORM: the workers' own, the sender's pool, the bootstrap's.

`postgres_database()` reads POSTGRES_* once, as a Django DATABASES entry (the settings use it);
every connection outside the ORM is built from such an entry, so they all reach the same server.
"""

import psycopg2
import psycopg2.extensions

from core.env import env_int, env_str


def postgres_database() -> dict:
    """The DATABASES entry for POSTGRES_HOST, _PORT, _DB, _USER, _PASSWORD and _CONNECT_TIMEOUT."""
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": env_str("POSTGRES_HOST", "127.0.0.1"),
        "PORT": env_int("POSTGRES_PORT", 5432),
        "NAME": env_str("POSTGRES_DB", "emails"),
        "USER": env_str("POSTGRES_USER", "postgres"),
        "PASSWORD": env_str("POSTGRES_PASSWORD", ""),
        "OPTIONS": {"connect_timeout": env_int("POSTGRES_CONNECT_TIMEOUT", 5)},
    }


def connect_kwargs(database: dict, *, application_name: str) -> dict:
    """psycopg2's keyword arguments for a DATABASES entry; `application_name` is what
    pg_stat_activity shows next to the other processes' connections."""
    return {
        "host": database["HOST"],
        "port": database["PORT"],
        "dbname": database["NAME"],
        "user": database["USER"],
        "password": database["PASSWORD"],
        "connect_timeout": database.get("OPTIONS", {}).get("connect_timeout", 5),
        "application_name": application_name,
    }


def connect_postgres(
    database: dict, *, application_name: str, idle_in_transaction_ms: int
) -> psycopg2.extensions.connection:
    """A new connection (not autocommit) to a DATABASES entry. Postgres ends its session when it
    idles inside a transaction longer than `idle_in_transaction_ms` (0: never). May raise
    psycopg2.OperationalError."""
    return psycopg2.connect(
        **connect_kwargs(database, application_name=application_name),
        options=f"-c idle_in_transaction_session_timeout={idle_in_transaction_ms}",
    )


def listen_postgres(database: dict, *, application_name: str, channel: str) -> psycopg2.extensions.connection:
    """A connection of its own (autocommit, never idle in a transaction) LISTENing on `channel`:
    a worker waits on its fileno() for NOTIFYs. May raise psycopg2.OperationalError."""
    conn = connect_postgres(database, application_name=application_name, idle_in_transaction_ms=0)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    with conn.cursor() as cursor:
        cursor.execute(f'LISTEN "{channel}"')
    return conn
