"""Argument types for the command-line tools: what a row, a query or a socket cannot take is a
usage error (exit 2, argparse's message naming the option), never a traceback from deep inside.

Arguments arrive as the operating system's bytes: those that are not UTF-8 reach Python as lone
surrogates, which the text types refuse like control characters.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime

from core.text import text_problem


def line(max_length: int):
    """One line of printable text, 1 to `max_length` characters (an id, a type, a name)."""

    def parse(value: str) -> str:
        if not value or len(value) > max_length:
            raise argparse.ArgumentTypeError(f"expected 1 to {max_length} characters, got {len(value)}")
        if problem := text_problem(value, single_line=True):
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "text"
    return parse


def text(max_length: int):
    """Free text of at most `max_length` characters (a reason)."""

    def parse(value: str) -> str:
        if len(value) > max_length:
            raise argparse.ArgumentTypeError(f"expected at most {max_length} characters, got {len(value)}")
        if problem := text_problem(value):
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "text"
    return parse


def integer(low: int, high: int):
    """An integer from `low` to `high`."""

    def parse(value: str) -> int:
        try:
            number = int(value) if value.strip().lstrip("+-").isdigit() and len(value) <= 20 else None
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {value!r}")
        return number

    parse.__name__ = "integer"
    return parse


def port(value: str) -> int:
    """A TCP port; 0 where the option allows it means none."""
    return integer(0, 65535)(value)


def event_id(value: str) -> str:
    """An event id: a UUID."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def moment(value: str) -> datetime:
    """An ISO 8601 date or date-time (a date is its midnight; no offset is UTC)."""
    from django.utils.dateparse import parse_date, parse_datetime
    from django.utils.timezone import is_naive, make_aware

    try:
        parsed = parse_datetime(value)
        if parsed is None and (day := parse_date(value)) is not None:
            parsed = datetime(day.year, day.month, day.day)
        if parsed is not None:
            parsed = make_aware(parsed) if is_naive(parsed) else parsed
            parsed.astimezone(UTC)  # an offset that takes it past the calendar raises
    except (ValueError, OverflowError):
        parsed = None
    if parsed is None:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time within the calendar: {value!r}")
    return parsed
