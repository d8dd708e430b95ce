"""Server-side prepared statements for the few statements every request or message runs.

Postgres plans a statement on every execution unless it was prepared; for the send's four-part
`WITH … INSERT` planning took about as long as running it. A `Prepared` statement is planned
once per database session: the first use on a connection sends `PREPARE`, every use sends
`EXECUTE` with the values. Works on a Django cursor and on a plain psycopg2 cursor alike.

Off with POSTGRES_PREPARED_STATEMENTS=false, for a pooler in transaction mode (PgBouncer), which
does not keep a session's prepared statements for it.
"""

from __future__ import annotations

import re
import weakref

from django.conf import settings

_PARAMETER = re.compile(r"%\((\w+)\)s")


class Prepared:
    """One statement written with `%(name)s` parameters, prepared as `name` on each session."""

    _names: set[str] = set()  # one statement per name in a session

    def __init__(self, name: str, sql: str):
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or name in Prepared._names:
            raise ValueError(f"{name!r}: a prepared statement needs a new lower-case identifier")
        if _PARAMETER.sub("", sql).count("%"):
            raise ValueError(f"{name}: only %(name)s parameters are supported")
        Prepared._names.add(name)
        self.name, self.sql = name, sql
        self.parameters: list[str] = []

        def number(match: re.Match) -> str:
            if match.group(1) not in self.parameters:
                self.parameters.append(match.group(1))
            return f"${self.parameters.index(match.group(1)) + 1}"

        self._prepare = f"PREPARE {name} AS {_PARAMETER.sub(number, sql)}"
        self._execute = (
            f"EXECUTE {name} ({', '.join(['%s'] * len(self.parameters))})" if self.parameters else f"EXECUTE {name}"
        )
        # The psycopg2 connections it was prepared on. A connection object is one session (it never
        # reconnects), and a closed one drops out of the set when it is collected.
        self._sessions: weakref.WeakSet = weakref.WeakSet()

    def execute(self, cursor, params: dict) -> None:
        if not settings.POSTGRES_PREPARED_STATEMENTS:
            cursor.execute(self.sql, params)
            return
        session = getattr(cursor, "cursor", cursor).connection  # Django's CursorWrapper, or psycopg2's cursor
        if session not in self._sessions:
            cursor.execute(self._prepare)
            self._sessions.add(session)
        cursor.execute(self._execute, [params[name] for name in self.parameters])
