"""Stopping and starting the real Postgres and RabbitMQ for fault tests (local services only)."""

import os
import subprocess
import time

from django.db import connection


def _postgres_version() -> str:
    return sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])[-1]


def restart_postgres() -> None:
    """Restart the cluster: every connection is cut, as in a failover. Ours reconnects."""
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", _postgres_version(), "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    connection.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            connection.ensure_connection()
            return
        except Exception:
            connection.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop_rabbitmq() -> None:
    subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True, capture_output=True, timeout=120)


def start_rabbitmq() -> None:
    subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, capture_output=True, timeout=120)


def set_memory_alarm(on: bool) -> None:
    """Raise RabbitMQ's memory alarm (a tiny high watermark) or restore the default."""
    watermark = "0.000001" if on else "0.4"
    subprocess.run(
        ["rabbitmqctl", "-q", "set_vm_memory_high_watermark", watermark], check=True, capture_output=True, timeout=60
    )
