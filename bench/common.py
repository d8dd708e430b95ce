"""What the benchmark scripts share: a database of their own, waiting for a server, reading wrk."""

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def setup_django(*, database: str, settings_module: str, prefix: str, **env: str) -> None:
    """Point this process (and the processes it starts) at `database` and broker `prefix` with
    production settings, create and migrate the database, set Django up on `settings_module`.
    The processes it starts then run on their own settings (their entry points' defaults)."""
    os.environ.update(
        {
            "POSTGRES_DB": database,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "benchmark-only",
            "BROKER_PREFIX": prefix,
            "LOG_LEVEL": "WARNING",
            **env,
        }
    )
    subprocess.run([sys.executable, "-m", "core.db_bootstrap"], cwd=ROOT, check=True)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        check=True,
        env=os.environ | {"DJANGO_SETTINGS_MODULE": "deployment.settings"},
    )
    import django

    django.setup()
    del os.environ["DJANGO_SETTINGS_MODULE"]


def send_load(system) -> tuple[str, dict, str]:
    """The end-to-end benchmarks' POST on a running tests.system.System: a staff user's token,
    a template, and a 2-recipient body that renders it. Returns (url, body, token)."""
    token, template_id = system.staff_with_template("load", subject="Hi {{ name }}", body="<p>Hi {{ name }}</p>")
    body = {"recipients": ["ann@example.com", "bob@example.org"], "template": template_id, "context": {"name": "Ann"}}
    return f"{system.command_url}/api/v1/emails/sent-email/", body, token


def wait_http(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {seconds}s")


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q`th percentile of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def parse_wrk(output: str) -> dict:
    """Requests, requests/s, latency percentiles (ms), non-2xx answers and socket errors."""

    def latency_ms(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
        return float(value) / 1000 if unit == "us" else float(value) * (1000 if unit == "s" else 1)

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        **{f"p{q}": latency_ms(str(q)) for q in (50, 75, 90, 99)},
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1) if errors else "none",
    }


def wrk_post(url: str, body: dict, *, token: str | None, connections: int, duration: int) -> tuple[dict, str]:
    """wrk (closed loop, keep-alive, one thread) POSTing `body` as JSON; (figures, raw output)."""
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        if token:
            script.write(f'wrk.headers["Authorization"] = "Token {token}"\n')
        script.write(f"wrk.body = '{json.dumps(body)}'\n")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out), out


def _proc_stats() -> dict[int, tuple[str, int, float]]:
    """Every process: pid -> (command name, parent pid, CPU seconds so far)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue  # exited meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry)] = (name, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return stats


def cpu_by_group(
    roots: dict[str, int], postgres_backends: dict[int, str] | None = None
) -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process, with its group: each of `roots` (a process and
    its descendants), "postgres" (split by the client named in `postgres_backends`, backend pid
    -> application name), "rabbitmq", "wrk", and "other" for the rest of the machine. Take two
    readings and give them to cpu_delta to see where a run's CPU went."""
    stats = _proc_stats()
    group_of: dict[int, str] = {pid: name for name, pid in roots.items()}

    def group(pid: int) -> str:
        seen = []
        while pid not in group_of:
            if pid not in stats or pid <= 1:
                break
            seen.append(pid)
            name = stats[pid][0]
            if name == "postgres":
                client = (postgres_backends or {}).get(pid)
                group_of[pid] = f"postgres ({client})" if client else "postgres"
            elif name in ("beam.smp", "erl_child_setup", "epmd", "inet_gethost"):
                group_of[pid] = "rabbitmq"
            elif name == "wrk":
                group_of[pid] = "wrk"
            else:
                pid = stats[pid][1]
                continue
            break
        found = group_of.get(pid, "other")
        for visited in seen:
            group_of[visited] = found
        return found

    return {pid: (group(pid), seconds) for pid, (_, _, seconds) in stats.items()}


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per group between two cpu_by_group readings. A process that started in between
    counts whole; one that exited in between is lost (its CPU can no longer be read)."""
    totals: dict[str, float] = {}
    for pid, (group, seconds) in after.items():
        used = seconds - before[pid][1] if pid in before else seconds
        totals[group] = totals.get(group, 0.0) + used
    return totals
