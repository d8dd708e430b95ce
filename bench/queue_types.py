"""Benchmark: what each RabbitMQ queue type costs the broker per message, as the pipeline uses
its queues: persistent 1 KB messages published in confirmed batches (the relay's publisher),
then consumed with a prefetch and acked one by one (the sender) or many at a time (the
projector).

    .venv/bin/python bench/queue_types.py [--messages 20000] [--batch 20] [--rounds 3]

For each queue type (quorum, classic with the version 1 and version 2 storage) and each round:
the broker's CPU (beam.smp and its helpers) per message published, and per message consumed,
and the publish rate. Each figure is the median of the rounds. Run it by hand, on a quiet
machine; it is not part of the test suite.
"""

import argparse
import statistics
import time
import uuid

from common import cpu_by_group, cpu_delta, setup_django  # noqa: E402

PREFIX = "bench-queue-types"
TYPES = {
    "quorum": {"x-queue-type": "quorum"},
    "classic (v1 storage)": {"x-queue-type": "classic", "x-queue-version": 1},
    "classic (v2 storage)": {"x-queue-type": "classic", "x-queue-version": 2},
}


def broker_cpu(before) -> float:
    return cpu_delta(before, cpu_by_group({})).get("rabbitmq", 0.0)


def run(kind: str, arguments: dict, *, messages: int, batch: int, multiple_ack: bool) -> dict:
    import pika
    from django.conf import settings

    from core.broker import Topology, connection_parameters
    from outbox_relay.publisher import ConfirmingPublisher, OutgoingMessage

    topology = Topology(prefix=f"{PREFIX}.{uuid.uuid4().hex[:8]}", consumers=())
    queue = f"{topology.prefix}.work"
    admin = pika.BlockingConnection(connection_parameters(settings.RABBITMQ_URL, name="bench"))
    channel = admin.channel()
    channel.exchange_declare(topology.exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue, durable=True, arguments=arguments)
    channel.queue_bind(queue, topology.exchange, routing_key="email.#")
    body = b'{"payload": "' + b"x" * 1000 + b'"}'
    publisher = ConfirmingPublisher(url=settings.RABBITMQ_URL, topology=topology, name="bench")
    publisher.connect()
    try:
        before, started = cpu_by_group({}), time.perf_counter()
        for start in range(0, messages, batch):
            result = publisher.publish_batch(
                [
                    OutgoingMessage(
                        message_id=str(uuid.uuid4()),
                        routing_key="email.requested",
                        body=body,
                        headers={"correlation_id": "bench"},
                    )
                    for _ in range(start, min(messages, start + batch))
                ],
                timeout=30,
            )
            assert not (result.nacked or result.unconfirmed or result.returned), result
        publish_seconds = time.perf_counter() - started
        published_cpu = broker_cpu(before)

        before, consumed, unacked = cpu_by_group({}), 0, 0
        channel.basic_qos(prefetch_count=200)
        for method, _, _ in channel.consume(queue, inactivity_timeout=5):
            if method is None:
                break
            consumed += 1
            unacked = method.delivery_tag
            if not multiple_ack or consumed % 100 == 0 or consumed == messages:
                channel.basic_ack(unacked, multiple=multiple_ack)
            if consumed == messages:
                break
        channel.cancel()
        consumed_cpu = broker_cpu(before)
        assert consumed == messages, f"{kind}: consumed {consumed} of {messages}"
    finally:
        publisher.close()
        channel.queue_delete(queue)
        channel.exchange_delete(topology.exchange)
        admin.close()
    return {
        "publish_us": published_cpu * 1e6 / messages,
        "consume_us": consumed_cpu * 1e6 / messages,
        "rate": messages / publish_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=20, help="messages per confirmed batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    setup_django(database="emails_bench_queue_types", settings_module="deployment.settings", prefix=PREFIX)

    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for kind, arguments in TYPES.items():
            for acks in ("one by one", "100 at a time"):
                figures = run(
                    kind, arguments, messages=args.messages, batch=args.batch, multiple_ack=acks != "one by one"
                )
                results.setdefault((kind, acks), []).append(figures)
    print(
        f"{args.messages} persistent 1 KB messages, confirmed in batches of {args.batch}, consumed with a "
        f"prefetch of 200; the broker's CPU per message, medians of {args.rounds} rounds:"
    )
    for (kind, acks), runs in results.items():

        def median(key, runs=runs):
            return statistics.median(r[key] for r in runs)

        print(
            f"  {kind:22} acks {acks:14} publish {median('publish_us'):6.0f} us  consume {median('consume_us'):6.0f} us"
            f"  total {median('publish_us') + median('consume_us'):6.0f} us  ({median('rate'):7.0f} published/s)"
        )


if __name__ == "__main__":
    main()
