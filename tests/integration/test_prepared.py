"""Server-side prepared statements (core/prepared.py) against the real Postgres."""

import pytest
from django.db import connection
from django.test import override_settings

from core.prepared import Prepared

pytestmark = pytest.mark.django_db

ECHO = Prepared("test_echo", "SELECT %(word)s::text, %(n)s::int + %(n)s::int")


def prepared_here() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {row[0] for row in cursor.fetchall()}


def echo(word, n):
    with connection.cursor() as cursor:
        ECHO.execute(cursor, {"word": word, "n": n, "unused": "ignored"})
        return cursor.fetchone()


def test_a_statement_is_prepared_once_per_session_and_runs_with_its_values():
    assert echo("ann", 2) == ("ann", 4)
    assert echo("it's", 20) == ("it's", 40)  # values travel as values, quotes and all
    assert "test_echo" in prepared_here()
    assert ECHO.parameters == ["word", "n"]  # a repeated name is one parameter


@pytest.mark.django_db(transaction=True)
def test_a_new_session_prepares_it_again():
    assert echo("before", 1) == ("before", 2)
    connection.close()  # the next query opens a new session, which has no prepared statements
    assert echo("after", 1) == ("after", 2)
    assert "test_echo" in prepared_here()


@pytest.mark.django_db(transaction=True)
@override_settings(POSTGRES_PREPARED_STATEMENTS=False)
def test_switched_off_nothing_is_prepared():
    connection.close()
    assert echo("plain", 3) == ("plain", 6)
    assert "test_echo" not in prepared_here()


def test_only_named_parameters_and_new_names_are_accepted():
    with pytest.raises(ValueError, match="only %"):
        Prepared("test_positional", "SELECT %s")
    with pytest.raises(ValueError, match="new lower-case identifier"):
        Prepared("test_echo", "SELECT 1")
    with pytest.raises(ValueError, match="new lower-case identifier"):
        Prepared("bad name; DROP", "SELECT 1")


def test_the_hot_statements_are_prepared_by_use(user_client, template):
    response = user_client.post(
        "/api/v1/emails/sent-email/", {"recipients": ["ann@example.com"], "template": template.pk}, format="json"
    )
    assert response.status_code == 202
    assert {"sent_email_write_notify"} <= prepared_here()
