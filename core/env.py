"""Typed readers for environment variables, the only place settings come from (12-factor)."""

import os
import re
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ImproperlyConfigured(f"The environment variable {name} is required.")
        return default
    return value


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}.") from None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}.")


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_durations(text: str) -> tuple[float, ...]:
    """'10s, 1m, 2h' -> (10.0, 60.0, 7200.0). Raises ValueError naming the bad item."""
    values = []
    for item in text.split(","):
        match = _DURATION.match(item)
        if not match:
            raise ValueError(f"{item.strip()!r} is not a duration like 500ms, 10s, 5m, 2h or 1d")
        values.append(float(match.group(1)) * _UNITS[match.group(2)])
    return tuple(values)


def env_durations(name: str, default: str) -> tuple[float, ...]:
    raw = os.environ.get(name)
    try:
        return parse_durations(default if raw is None or not raw.strip() else raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}.") from None


@dataclass(frozen=True)
class Rate:
    """At most `count` in `seconds`, as the setting wrote it (`text`, which str() gives back)."""

    count: int
    seconds: int
    text: str

    def __str__(self) -> str:
        return self.text


_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_rate(text: str) -> Rate | None:
    """'10/day' -> Rate(10, 86400); '', 'off', 'none' or '0' -> None (no limit). Raises ValueError."""
    if text.strip().lower() in ("", "off", "none", "0"):
        return None
    try:
        count, period = text.split("/")
        rate = Rate(int(count), _PERIODS[period.strip().lower()], text)
    except (ValueError, KeyError):
        raise ValueError(f"{text!r} is not a rate like '10/day' (second, minute, hour or day)") from None
    if rate.count < 1:
        raise ValueError(f"{text!r} allows nothing: a rate counts at least 1 (or is off)")
    return rate


def env_rate(name: str, default: str) -> Rate | None:
    raw = os.environ.get(name)
    try:
        return parse_rate(default if raw is None else raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}.") from None
