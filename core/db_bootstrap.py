"""Create the project's database when it is missing: `python -m core.db_bootstrap`.

Connects to the server's maintenance database (POSTGRES_MAINTENANCE_DB, default postgres) with
the settings' POSTGRES_* variables.
"""

import os
import sys

from psycopg2 import sql

from core.db import connect_postgres, postgres_database


def ensure_database() -> bool:
    """Create POSTGRES_DB if it does not exist; True when it was created."""
    database = postgres_database()
    maintenance = {**database, "NAME": os.environ.get("POSTGRES_MAINTENANCE_DB", "postgres")}
    conn = connect_postgres(maintenance, application_name="db-bootstrap", idle_in_transaction_ms=0)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database["NAME"]])
            if cursor.fetchone():
                return False
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database["NAME"])))
            return True
    finally:
        conn.close()


if __name__ == "__main__":
    created = ensure_database()
    print(f"database {postgres_database()['NAME']}: {'created' if created else 'exists'}")
    sys.exit(0)
