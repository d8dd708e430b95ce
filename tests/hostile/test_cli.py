"""The ops command lines refuse bad arguments as usage errors (exit 2, the option named), never
with a traceback: arguments that are not UTF-8, control characters, ids that are not UUIDs,
numbers out of range, dates that do not exist, ports that cannot be bound."""

import os
import subprocess
import sys

import pytest

from tests.system import ROOT

NOT_UTF8 = b"\xff\xfe"
CASES = [
    ("outbox_relay", [b"list", b"--event-id", b"not-a-uuid"], "--event-id"),
    ("outbox_relay", [b"list", b"--aggregate", b"a\x01b"], "--aggregate"),
    ("outbox_relay", [b"list", b"--aggregate", NOT_UTF8], "--aggregate"),
    ("outbox_relay", [b"list", b"--type", b"t" * 100], "--type"),
    ("outbox_relay", [b"list", b"--type", b"email\nrequested"], "--type"),
    ("outbox_relay", [b"list", b"--since", b"2026-02-30"], "--since"),
    ("outbox_relay", [b"list", b"--since", b"2026-01-01T00:00:00+25:00"], "--since"),
    ("outbox_relay", [b"list", b"--until", b"0001-01-01T00:00:00+14:00"], "--until"),
    ("outbox_relay", [b"list", b"--until", b"10000-01-01"], "--until"),
    ("outbox_relay", [b"list", b"--limit", b"-1"], "--limit"),
    ("outbox_relay", [b"list", b"--limit", b"9" * 30], "--limit"),
    ("outbox_relay", [b"list", b"--limit", "²".encode()], "--limit"),
    ("outbox_relay", [b"replay", b"--aggregate", b"1", b"--reason", NOT_UTF8], "--reason"),
    ("outbox_relay", [b"replay", b"--aggregate", b"1", b"--actor", b"\x1b[31m"], "--actor"),
    ("outbox_relay", [b"purge", b"--older-than-days", b"99999999999"], "--older-than-days"),
    ("outbox_relay", [b"purge", b"--older-than-days", b"-5"], "--older-than-days"),
    ("outbox_relay", [b"run", b"--http-port", b"70000"], "--http-port"),
    ("query_api", [b"reconcile", b"--limit", b"-1"], "--limit"),
    ("query_api", [b"reconcile", b"--limit", b"1" * 25], "--limit"),
    ("query_api", [b"project", b"--http-port", b"-1"], "--http-port"),
    ("sender", [b"run", b"--http-port", b"99999"], "--http-port"),
]


@pytest.mark.parametrize("module, args, option", CASES, ids=[f"{m}:{' '.join(map(repr, a))}" for m, a, _ in CASES])
def test_a_bad_argument_is_a_usage_error(module, args, option):
    result = subprocess.run(
        [sys.executable.encode(), b"-m", module.encode(), *args],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        env=os.environ | {"LOG_LEVEL": "ERROR"},
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr and option in stderr, stderr[-2000:]
