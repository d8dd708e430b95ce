"""A RabbitMQ cluster of three nodes on this machine, beside the broker the machine runs (which is
left alone): each node has its own config file, node name, ports and data folders, owned by the
rabbitmq user, and they share that user's Erlang cookie. For the fault tests and bench/chaos.py.

    with RabbitCluster(base_port=5681) as cluster:
        cluster.url            # amqp URLs of the three nodes, comma-separated (RABBITMQ_URL)
        cluster.leader_of(q)   # the node that leads a quorum queue
        cluster.kill(node)     # SIGKILL its Erlang VM
        cluster.start(node)    # and bring it back
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

USER = "rabbitmq"
HOME = "/var/lib/rabbitmq"  # the rabbitmq user's home: its .erlang.cookie


@dataclass(frozen=True)
class Node:
    name: str  # e.g. chaos-1@localhost
    port: int
    dist_port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"


def _as_rabbitmq(args: list[str], env: dict | None = None, timeout: float = 120, check: bool = True):
    command = [
        "runuser",
        "-u",
        USER,
        "--",
        "env",
        f"HOME={HOME}",
        "ERL_EPMD_ADDRESS=127.0.0.1",
        *(f"{k}={v}" for k, v in (env or {}).items()),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=check)


class RabbitCluster:
    def __init__(self, *, base_port: int = 5681, size: int = 3, prefix: str = "chaos", config: str = ""):
        self.config = config  # more rabbitmq.conf lines for every node (kept across its restarts)
        self.root = Path(tempfile.mkdtemp(prefix="rabbit-cluster-"))
        shutil.chown(self.root, USER, USER)
        self.nodes = [
            Node(
                name=f"{prefix}-{n}@localhost",
                port=base_port + n,
                dist_port=base_port + 20000 + n,
                folder=self.root / f"node{n}",
            )
            for n in range(size)
        ]

    # Lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> RabbitCluster:
        self._kill_strays()
        try:
            for node in self.nodes:
                self._prepare(node)
                self.start(node, wait=False)
            for node in self.nodes:
                self.wait(node)
            first = self.nodes[0]
            for node in self.nodes[1:]:
                self.ctl(node, "stop_app")
                self.ctl(node, "join_cluster", first.name)
                self.ctl(node, "start_app")
            for node in self.nodes:
                self.wait(node)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for node in self.nodes:
            if self._pid(node):
                self.ctl(node, "stop", check=False, timeout=60)
        self._kill_strays()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_strays(self) -> None:
        """SIGKILL every Erlang VM that runs one of our node names: ours, and any an earlier run
        left behind when it was killed before it could stop them (a node name runs once per host).
        Found by the environment rabbitmq-server gave it; the machine's own broker has none."""
        names = {f"RABBITMQ_NODENAME={node.name}".encode() for node in self.nodes}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = set((proc / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            joined = b"".join(environ)
            if names & environ and b"RABBITMQ_CONFIG_FILE" in joined and b"rabbit-cluster-" in joined:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(self._pid(node) for node in self.nodes) and time.monotonic() < deadline:
            time.sleep(0.1)

    def _prepare(self, node: Node) -> None:
        node.folder.mkdir(parents=True)
        (node.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{node.port}\n"
            "loopback_users = none\n"
            "cluster_partition_handling = pause_minority\n" + self.config
        )
        (node.folder / "enabled_plugins").write_text("[].\n")
        for path in [node.folder, *node.folder.iterdir()]:
            shutil.chown(path, USER, USER)

    def _env(self, node: Node) -> dict:
        return {
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_DIST_PORT": node.dist_port,
            "RABBITMQ_CONFIG_FILE": node.folder / "rabbitmq.conf",
            "RABBITMQ_MNESIA_BASE": node.folder / "mnesia",
            "RABBITMQ_LOG_BASE": node.folder / "log",
            "RABBITMQ_FEATURE_FLAGS_FILE": node.folder / "feature_flags",
            "RABBITMQ_ENABLED_PLUGINS_FILE": node.folder / "enabled_plugins",
            "RABBITMQ_PID_FILE": node.folder / "pid",
        }

    def start(self, node: Node, *, wait: bool = True) -> None:
        _as_rabbitmq(["rabbitmq-server", "-detached"], self._env(node))
        if wait:
            self.wait(node)

    def wait(self, node: Node, timeout: float = 120) -> None:
        """Until the node has booted. `rabbitmq-server -detached` returns before the node can be
        reached, and await_startup fails at once until then: ask again."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(1, int(deadline - time.monotonic()))
            answer = self.ctl(node, "await_startup", "--timeout", str(left), check=False, timeout=left + 10)
            if answer.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{node.name} did not start: {answer.stderr or answer.stdout}")
            time.sleep(0.5)

    def kill(self, node: Node) -> None:
        """SIGKILL the node's Erlang VM: no goodbye to its peers or its clients."""
        pid = self._pid(node)
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)

    def _pid(self, node: Node) -> int | None:
        try:
            pid = int((node.folder / "pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._alive(pid) else None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            return False

    # Asking the cluster ------------------------------------------------------------------------

    def ctl(self, node: Node, *args: str, check: bool = True, timeout: float = 120):
        return _as_rabbitmq(["rabbitmqctl", "-n", node.name, *args], timeout=timeout, check=check)

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def running(self) -> list[Node]:
        return [node for node in self.nodes if self._pid(node)]

    def members_of(self, queue: str) -> list[str]:
        """The nodes that hold a replica of the quorum queue `queue`."""
        for node in self.running():
            answer = self.ctl(node, "list_queues", "-q", "--no-table-headers", "name", "members", check=False)
            for line in answer.stdout.splitlines():
                name, _, members = line.partition("\t")
                if name.strip() == queue:
                    return [m.strip() for m in members.strip().strip("[]").split(",") if m.strip()]
        raise LookupError(f"no members found for {queue}")

    def leader_of(self, queue: str) -> Node:
        """The node that leads the quorum queue `queue` now."""
        for node in self.running():
            answer = self.ctl(node, "list_queues", "-q", "--no-table-headers", "name", "leader", check=False)
            for line in answer.stdout.splitlines():
                name, _, leader = line.partition("\t")
                if name.strip() == queue:
                    return next(n for n in self.nodes if n.name == leader.strip())
        raise LookupError(f"no leader found for {queue}")
