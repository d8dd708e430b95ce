"""A host of its own for one process, to cut off from the network: a network namespace joined to
this machine by a veth pair, with TCP relays on this side for the services the process needs
(Postgres, RabbitMQ, the fake SendGrid, the APIs), and a link that can be cut and healed. Cutting
it drops every packet, as a partition does: nothing is closed, the peers only stop hearing each
other (until TCP or AMQP heartbeats give up).

    with Namespace("sender") as ns:
        url = ns.reach("amqp://guest:guest@127.0.0.1:5672/%2F")   # the same service, from inside
        subprocess.Popen(ns.command([...]), env=...)
        ns.cut(); ...; ns.heal()
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import selectors
import socket
import subprocess
import threading

_counter = itertools.count(1)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class _Relay:
    """Listens on `listen` and copies bytes both ways to `target`, one thread per connection."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.server.settimeout(0.5)
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                inside, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                outside = socket.create_connection(self.target, timeout=5)
            except OSError:
                inside.close()
                continue
            self.sockets += [inside, outside]
            threading.Thread(target=self._pipe, args=(inside, outside), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()  # blocking sockets: sendall waits for room, never fails
        for sock in (a, b):
            sock.settimeout(None)
            selector.register(sock, selectors.EVENT_READ)
        try:
            while not self.stopped.is_set():
                for key, _ in selector.select(timeout=0.5):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    (b if key.fileobj is a else a).sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            a.close()
            b.close()

    def stop(self) -> None:
        self.stopped.set()
        self.server.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


class Namespace:
    def __init__(self, name: str):
        n, pid = next(_counter), os.getpid()
        self.name = f"{name}-{pid}-{n}"  # a namespace's name may be long; a link's has 15 characters
        subnet = f"10.{200 + (pid // 250 + n) % 50}.{pid % 250}"
        self.host_ip, self.inside_ip = f"{subnet}.1", f"{subnet}.2"
        self._host_link, self._inside_link = f"vh{pid % 100000}x{n}", f"vi{pid % 100000}x{n}"
        self._relays: dict[int, _Relay] = {}

    def __enter__(self) -> Namespace:
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self._host_link, "type", "veth", "peer", "name", self._inside_link)
            _ip("link", "set", self._inside_link, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self._host_link)
            _ip("link", "set", self._host_link, "up")
            for args in (
                ("addr", "add", f"{self.inside_ip}/30", "dev", self._inside_link),
                ("link", "set", self._inside_link, "up"),
                ("link", "set", "lo", "up"),
            ):
                _ip("netns", "exec", self.name, "ip", *args)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for relay in self._relays.values():
            relay.stop()
        subprocess.run(["ip", "link", "del", self._host_link], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    def relay(self, port: int) -> str:
        """This machine's 127.0.0.1:`port` as the namespace reaches it: host_ip:`port`."""
        if port not in self._relays:
            self._relays[port] = _Relay((self.host_ip, port), ("127.0.0.1", port))
        return f"{self.host_ip}:{port}"

    def reach(self, url: str) -> str:
        """`url` (or several, comma-separated) with every 127.0.0.1:port made reachable from inside."""
        return re.sub(r"(?:127\.0\.0\.1|localhost):(\d+)", lambda m: self.relay(int(m.group(1))), url)

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def cut(self) -> None:
        """Drop every packet between the namespace and this machine: the host's end of the veth
        pair goes down, the namespace's stays up, and no connection is closed or reset."""
        _ip("link", "set", self._host_link, "down")

    def heal(self) -> None:
        _ip("link", "set", self._host_link, "up")
