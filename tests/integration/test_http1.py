"""sender/http1.py against a real socket: each way a response can be framed, a kept-alive
connection, and the errors the provider classifies (a silent server, a closed connection, a
response it cannot read)."""

import http.client
import socket
import threading

import pytest

from sender.http1 import Connection

HEAD = b"POST /v3/mail/send HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"


class Server:
    """Accepts one connection; for each request it reads, it sends the next canned answer
    (None: close the connection without answering). Keeps what it received."""

    def __init__(self, answers, tls=None):
        self.answers = list(answers)
        self.listener = socket.create_server(("127.0.0.1", 0))
        if tls is not None:
            self.listener = tls.wrap_socket(self.listener, server_side=True)
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.reads: list[int] = []  # recv calls per request: a request written at once arrives whole
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:  # a TLS client that refused our certificate
            return
        with conn:
            buffer = b""
            for answer in self.answers:
                reads = 0
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                    reads += 1
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                    reads += 1
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                self.reads.append(reads)
                buffer = buffer[length:]
                if answer is None:
                    return
                conn.sendall(answer)

    def connection(self, timeout=2.0) -> Connection:
        return Connection("127.0.0.1", self.port, timeout=timeout, tls=None)


def call(conn, body=b'{"a": 1}'):
    conn.send(HEAD, body)
    return conn.response()


def test_a_content_length_answer_and_the_connection_kept_for_the_next_request():
    server = Server(
        [
            b"HTTP/1.1 202 Accepted\r\nX-Message-Id: m1\r\nContent-Length: 0\r\n\r\n",
            b'HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"errors":[]}',
        ]
    )
    conn = server.connection()
    status, body, headers, reusable = call(conn)
    assert (status, body, headers.get("x-message-id"), headers.get("X-MESSAGE-ID"), reusable) == (
        202,
        b"",
        "m1",
        "m1",
        True,
    )
    assert not conn.closed_by_peer()
    status, body, _, reusable = call(conn, b"x" * 70000)
    assert (status, body, reusable) == (400, b'{"errors":[]}', True)
    assert server.requests[1].endswith(b"Content-Length: 70000\r\n\r\n" + b"x" * 70000)
    assert server.reads[0] == 1  # the head and body of a small request in one write


def test_a_chunked_answer_with_extensions_and_trailers():
    server = Server(
        [
            b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"
        ]
        + [None]
    )
    conn = server.connection()
    status, body, headers, reusable = call(conn)
    assert (status, body, headers.get("Retry-After"), reusable) == (429, b"hello world", "3", True)


def test_connection_close_and_a_body_that_ends_with_the_connection():
    server = Server([b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 4\r\n\r\noops"])
    status, body, _, reusable = call(server.connection())
    assert (status, body, reusable) == (500, b"oops", False)
    server = Server([b"HTTP/1.0 503 Service Unavailable\r\n\r\nback later"])
    conn = server.connection()
    conn.send(HEAD, b"{}")
    server.thread.join(timeout=5)  # it answered and closed the connection
    status, body, _, reusable = conn.response()
    assert (status, body, reusable) == (503, b"back later", False)


def test_an_interim_100_continue_is_followed_by_the_answer():
    server = Server([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"])
    assert call(server.connection())[0] == 202


def test_a_connection_closed_before_the_answer_is_remote_disconnected():
    server = Server([None])
    with pytest.raises(http.client.RemoteDisconnected):
        call(server.connection())


def test_a_silent_server_is_a_timeout():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog) and never answers
    conn = Connection("127.0.0.1", listener.getsockname()[1], timeout=0.3, tls=None)
    with pytest.raises(TimeoutError):
        call(conn)
    listener.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP 220 hello\r\n\r\n",
        b"HTTP/1.1 abc Weird\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_an_answer_it_cannot_read_is_an_http_exception(answer):
    server = Server([answer])
    with pytest.raises(http.client.HTTPException):
        call(server.connection())


def test_a_refused_connection_is_connection_refused():
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(ConnectionRefusedError):
        call(Connection("127.0.0.1", port, timeout=1, tls=None))


def self_signed(tmp_path):
    """A certificate for 127.0.0.1, and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_over_tls_the_certificate_is_checked_and_the_connection_kept(tmp_path):
    import ssl

    cert_file, key_file = self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    server = Server([b"HTTP/1.1 202 Accepted\r\nX-Message-Id: t1\r\nContent-Length: 0\r\n\r\n"] * 2, server_context)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    conn = Connection("127.0.0.1", server.port, timeout=2, tls=trusting)
    assert call(conn)[:2] == (202, b"") and call(conn)[2].get("x-message-id") == "t1"
    assert server.requests[1].startswith(b"POST /v3/mail/send")  # two requests, one TLS connection

    stranger = Server([b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"], server_context)
    with pytest.raises(ssl.SSLCertVerificationError):  # a certificate nobody vouches for
        call(Connection("127.0.0.1", stranger.port, timeout=2, tls=ssl.create_default_context()))
