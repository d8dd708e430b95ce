"""The relay's publisher against a broker that dies during the AMQP handshake."""

import socket
import threading

import pika

from core.broker import Topology
from outbox_relay.publisher import ConfirmingPublisher


def test_closing_a_connection_whose_node_dies_in_the_handshake_does_not_raise():
    # A node that takes the TCP connection and the protocol header, then goes (a leader SIGKILLed
    # while the relay reconnects): closing the half-open connection must not crash the relay.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    url = f"amqp://guest:guest@127.0.0.1:{server.getsockname()[1]}/%2F"

    def take_the_header_then_die():
        peer, _ = server.accept()
        peer.recv(8)
        threading.Event().wait(0.3)
        peer.close()

    threading.Thread(target=take_the_header_then_die, daemon=True).start()
    publisher = ConfirmingPublisher(url=url, topology=Topology(prefix="test-handshake"))
    publisher._connection = pika.SelectConnection(
        pika.URLParameters(url),
        on_open_callback=publisher._on_connection_open,
        on_open_error_callback=publisher._on_connection_open_error,
        on_close_callback=publisher._on_connection_closed,
        custom_ioloop=publisher._ioloop,
    )
    publisher._run_until(0.2)  # connected, in the handshake
    publisher.close()
    assert not publisher.is_open
    server.close()
