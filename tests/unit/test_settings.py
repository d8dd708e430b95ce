import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _import_settings(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SEND_"))}
    return subprocess.run(
        [sys.executable, "-c", "import command_api.settings"],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
    )


def test_secret_key_is_required_when_debug_is_off():
    result = _import_settings(DJANGO_DEBUG="false")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr


def test_local_development_needs_no_configuration():
    assert _import_settings(DJANGO_DEBUG="true").returncode == 0


def test_bad_boolean_is_refused_with_its_name():
    result = _import_settings(DJANGO_DEBUG="maybe")
    assert "DJANGO_DEBUG must be true or false" in result.stderr


def test_bad_send_rate_limit_is_refused_at_startup_with_its_name():
    for value in ("10/fortnight", "ten/day", "0/day"):
        result = _import_settings(DJANGO_DEBUG="true", SEND_RATE_LIMIT=value)
        assert result.returncode != 0
        assert "ImproperlyConfigured: SEND_RATE_LIMIT:" in result.stderr


def test_send_rate_limit_is_parsed_once_at_startup():
    from core.env import Rate, parse_rate

    assert parse_rate(" 10 / Day") == Rate(count=10, seconds=86400, text=" 10 / Day")
    assert str(parse_rate("2/hour")) == "2/hour"
    assert parse_rate("off") is parse_rate("") is None


def test_a_scheduled_hand_off_out_of_range_is_refused_at_startup_with_its_name():
    for value in ("-1", "3601"):
        result = _import_settings(DJANGO_DEBUG="true", SCHEDULED_HANDOFF_SECONDS=value)
        assert result.returncode != 0
        assert "SCHEDULED_HANDOFF_SECONDS must be 0 to 3600" in result.stderr
