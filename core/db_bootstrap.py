"""Create the project's database when it is missing: `python -m core.db_bootstrap`.

Connects to the server's maintenance database with the same environment variables as the
settings (POSTGRES_HOST, POSTGRES_PORT, POSTGRES_DB, POSTGRES_USER, POSTGRES_PASSWORD).
"""

import os
import sys

import psycopg2
from psycopg2 import sql


def ensure_database() -> bool:
    """Create POSTGRES_DB if it does not exist; True when it was created."""
    name = os.environ.get("POSTGRES_DB", "emails")
    conn = psycopg2.connect(
        host=os.environ.get("POSTGRES_HOST", "127.0.0.1"),
        port=int(os.environ.get("POSTGRES_PORT", "5432")),
        user=os.environ.get("POSTGRES_USER", "postgres"),
        password=os.environ.get("POSTGRES_PASSWORD", ""),
        dbname=os.environ.get("POSTGRES_MAINTENANCE_DB", "postgres"),
        connect_timeout=5,
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone():
                return False
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    finally:
        conn.close()


if __name__ == "__main__":
    created = ensure_database()
    print(f"database {os.environ.get('POSTGRES_DB', 'emails')}: {'created' if created else 'exists'}")
    sys.exit(0)
