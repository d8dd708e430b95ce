"""gunicorn settings for the two APIs, from the environment."""

import os
import shutil
import tempfile

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
accesslog = None  # the app logs one JSON line per request with its correlation id
errorlog = "-"

# Metrics. Each worker is a process of its own: with one registry per process, a scrape would see
# the counts of whichever worker answered it. prometheus_client's multiprocess mode has every
# process write its values to files in PROMETHEUS_MULTIPROC_DIR, which must be set before a worker
# imports prometheus_client and must start empty. prometheus_client's docs advise setting it in a
# start-up script, as a variable set in Python may not reach child processes; gunicorn forks its
# workers from this process, which sets it here, so they inherit it (the integration tests scrape
# the sum). A fresh directory for every start, in /tmp (an emptyDir in the cluster, kept across
# container restarts, hence not a fixed path), removed on a clean exit. The master serves the sum of
# every process's files on a port of its own: Prometheus scrapes it there, inside the cluster, and
# the gateway and the HTTPRoute, which only reach PORT, never route to it.
metrics_port = int(os.environ.get("API_METRICS_PORT", "9100"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prometheus-")


def when_ready(server):
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(metrics_port, registry=registry)


def child_exit(server, worker):
    # A dead worker's live gauges go; its counters stay in the sum (they only ever grow).
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
