"""A lean HTTP/1.1 client connection for the sender's one call, the Mail Send POST.

http.client parses every response's headers with the email package and sends a request in
several writes: about 100 to 170 µs of CPU a call here, against 30 µs for this. At the rate one
sender process is meant to carry (1,000 calls a second on one CPU), that is a tenth of its core.

It speaks just what the call needs, by RFC 9112: one request at a time on a kept-alive
connection, written in a single send with TCP_NODELAY; a response framed by Content-Length, by
chunked transfer coding, or by the connection closing; `Connection: close` honoured. Errors are
the standard library's: `TimeoutError` when the server is silent past the timeout, `OSError` when
the connection breaks, `http.client.HTTPException` for a response it cannot read, so the caller
classifies them as it would http.client's.
"""

from __future__ import annotations

import http.client
import re
import select
import socket
import ssl

MAX_HEAD = 64 * 1024  # status line and headers
MAX_BODY = 8 * 1024 * 1024  # SendGrid's answers are a few hundred bytes
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"[0-9a-fA-F]+")


class Headers(dict):
    """Response headers by lower-cased name; `get` takes any case (the last of a repeated one)."""

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)


class Connection:
    """`tls`: the context to wrap the socket in (one shared by every connection: building one loads
    the CA bundle, about 36 ms and 1 MB), or None for plain HTTP."""

    def __init__(self, host: str, port: int, *, timeout: float, tls: ssl.SSLContext | None):
        self.host, self.port, self.timeout, self.tls = host, port, timeout, tls
        self.sock: socket.socket | None = None
        self._buffer = b""

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        self.sock, self._buffer = sock, b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self._buffer = None, b""

    def closed_by_peer(self) -> bool:
        """An idle connection has nothing to read unless the far end closed it (EOF). poll, not
        select: a sender's descriptors pass select's limit of 1,024."""
        if self.sock is None or self._buffer:
            return True
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def send(self, head: bytes, body: bytes) -> None:
        """Write one request: `head` is the request line and headers without Content-Length."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))

    def response(self) -> tuple[int, bytes, Headers, bool]:
        """Read the response to the request sent: (status, body, headers, whether the connection
        can carry another request)."""
        head = self._until(b"\r\n\r\n", MAX_HEAD)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _DIGITS.fullmatch(parts[1]):
            raise http.client.BadStatusLine(lines[0][:100])
        status = int(parts[1])
        headers = Headers()
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise http.client.HTTPException(f"malformed header line: {line[:100]!r}")
            headers[name.lower()] = value.strip()
        if 100 <= status < 200:  # an interim answer (100 Continue): the final one follows
            return self.response()
        tokens = {token.strip() for token in headers.get("connection", "").lower().split(",")}
        reusable = parts[0] == "HTTP/1.1" and "close" not in tokens
        if status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in headers:
            length = headers["content-length"]
            if not _DIGITS.fullmatch(length) or int(length) > MAX_BODY:
                raise http.client.HTTPException(f"bad Content-Length: {length[:40]!r}")
            body = self._exactly(int(length))
        else:
            body, reusable = self._to_close(), False
        return status, body, headers, reusable

    def _fill(self) -> None:
        assert self.sock is not None
        data = self.sock.recv(65536)
        if not data:
            raise http.client.RemoteDisconnected("the server closed the connection before it answered")
        self._buffer += data

    def _until(self, marker: bytes, limit: int) -> bytes:
        while True:
            found = self._buffer.find(marker)
            if found >= 0:
                taken, self._buffer = self._buffer[:found], self._buffer[found + len(marker) :]
                return taken
            if len(self._buffer) > limit:
                raise http.client.HTTPException(f"no {marker!r} in {limit} bytes")
            self._fill()

    def _exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        taken, self._buffer = self._buffer[:count], self._buffer[count:]
        return taken

    def _chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self._until(b"\r\n", 1024).split(b";", 1)[0].strip().decode("latin-1")
            if not _HEX.fullmatch(size_line):
                raise http.client.HTTPException(f"bad chunk size: {size_line[:40]!r}")
            size = int(size_line, 16)
            total += size
            if total > MAX_BODY:
                raise http.client.HTTPException("the chunked body is too large")
            if size == 0:
                while self._until(b"\r\n", MAX_HEAD):  # trailer fields, up to the empty line
                    pass
                return b"".join(chunks)
            chunks.append(self._exactly(size))
            if self._exactly(2) != b"\r\n":
                raise http.client.HTTPException("a chunk does not end with CRLF")

    def _to_close(self) -> bytes:
        assert self.sock is not None
        while True:
            data = self.sock.recv(65536)
            if not data:
                body, self._buffer = self._buffer, b""
                return body
            self._buffer += data
            if len(self._buffer) > MAX_BODY:
                raise http.client.HTTPException("the body is too large")
