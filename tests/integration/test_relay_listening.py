"""The relay LISTENs only while quiet: under load it claims on a timer and no NOTIFY wakes it or
its listen session's backend; a batch that moves one row or none makes it listen again, and claim
once more for what committed while nobody listened. Against the real Postgres and RabbitMQ; these tests
commit (transaction=True): the relay reads with connections of its own."""

import threading
import time

import pytest
from django.conf import settings
from django.db import connection

from core.outbox.models import OutboxEvent
from core.worker_http import Health
from outbox_relay.publisher import ConfirmingPublisher
from outbox_relay.relay import RelayConfig, RelayWorker
from tests import broker

pytestmark = pytest.mark.django_db(transaction=True)

# Longer than any test here: only a NOTIFY, or the relay's polling while busy, explains a publish.
POLL_MS = 30000


def notify() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [settings.OUTBOX_NOTIFY_CHANNEL])


def listen_session_last_statement() -> str:
    """The statement the relay's listen session ran last: LISTEN or UNLISTEN (or none yet)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT query FROM pg_stat_activity"
            " WHERE application_name = 'outbox-relay-listen' AND datname = current_database()"
        )
        rows = cursor.fetchall()
    return rows[0][0].split()[0].upper() if len(rows) == 1 else ""


def published_soon(ids: list[str], *, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if broker.published_count(ids) == len(ids):
            return True
        time.sleep(0.05)
    return False


def listening(relay: RelayWorker) -> None:
    """Wait until the relay of this thread has connected and LISTENs."""
    broker.wait_for(lambda: relay._listen is not None and relay._listening, timeout=10, message="the relay listening")


def recording(relay: RelayWorker, before_listening_again=None) -> list[bool]:
    """Each LISTEN (True) and UNLISTEN (False) the relay runs from now on; `before_listening_again`
    runs once, the first time the relay is about to LISTEN again."""
    listen = relay._set_listening
    calls: list[bool] = []

    def recorded(on: bool) -> None:
        if on and before_listening_again is not None and True not in calls:
            before_listening_again()
        calls.append(on)
        listen(on)

    relay._set_listening = recorded  # type: ignore[method-assign]
    return calls


def make_busy() -> None:
    """A batch of five rows, one NOTIFY, published: the relay is busy (and stops listening)."""
    ids = broker.fill_outbox(5)
    notify()
    assert published_soon(ids, within=5)


def nack_everything(relay: RelayWorker, monkeypatch) -> None:
    """From now on the broker confirms none of the relay's messages: each comes back nacked."""
    real_publish = relay.publisher.publish_batch

    def unconfirmed(*args, **kwargs):
        result = real_publish(*args, **kwargs)
        return type(result)(**{**vars(result), "confirmed": [], "nacked": list(result.confirmed)})

    monkeypatch.setattr(relay.publisher, "publish_batch", unconfirmed)


def test_a_busy_relay_polls_without_listening_then_listens_again_when_quiet(topology, relays):
    relay = relays(topology, OUTBOX_POLL_INTERVAL_MS=POLL_MS, OUTBOX_GATHER_BUSY_MS=2000)
    relay.wait_ready()
    broker.wait_for(lambda: listen_session_last_statement() == "LISTEN", timeout=10, message="the relay listening")

    # A batch of five rows: the relay is busy, and stops listening.
    first = broker.fill_outbox(5)
    notify()
    assert published_soon(first, within=5)
    broker.wait_for(lambda: listen_session_last_statement() == "UNLISTEN", timeout=5, message="UNLISTEN")

    # Busy, it claims every OUTBOX_GATHER_BUSY_MS on its own: rows that notify nobody still go.
    unnotified = broker.fill_outbox(3)
    assert published_soon(unnotified, within=5)

    # Its next claims find nothing: it listens again, and a lone commit's NOTIFY wakes it.
    broker.wait_for(lambda: listen_session_last_statement() == "LISTEN", timeout=10, message="LISTEN again")
    lone = broker.fill_outbox(1)
    notify()
    assert published_soon(lone, within=3)
    assert relay.terminate() == 0


@pytest.fixture
def relay_in_thread(topology):
    """A RelayWorker of this process, run in a thread: a test may wrap its methods."""
    started = []

    def start(**overrides) -> RelayWorker:
        config = RelayConfig(
            database=connection.settings_dict,
            broker_url=settings.RABBITMQ_URL,
            notify_channel=settings.OUTBOX_NOTIFY_CHANNEL,
            poll_interval=POLL_MS / 1000,
            confirm_timeout=10.0,
            **({"batch_size": 100, "gather": 0.005, "gather_busy": 0.2} | overrides),
        )
        worker = RelayWorker(config, ConfirmingPublisher(url=settings.RABBITMQ_URL, topology=topology), Health())
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(timeout=15)
        assert not thread.is_alive(), "the relay did not stop"


def test_what_commits_while_the_relay_starts_listening_again_is_claimed_at_once(relay_in_thread):
    relay = relay_in_thread()
    listening(relay)
    late: list[str] = []

    def commit():
        # A transaction commits after the relay's last claim, before it LISTENs again: its NOTIFY
        # reaches nobody, and with a 30 s poll only the claim after the LISTEN can publish it.
        late.extend(broker.fill_outbox(1))
        notify()

    recording(relay, before_listening_again=commit)
    make_busy()
    broker.wait_for(lambda: late, timeout=5, message="the relay listening again")
    assert published_soon(late, within=3)


def test_a_quiet_relay_keeps_listening(relay_in_thread):
    relay = relay_in_thread(gather=0.0)
    listening(relay)
    calls = recording(relay)
    for _ in range(3):  # one row at a time: never busy
        ids = broker.fill_outbox(1)
        notify()
        assert published_soon(ids, within=3)
    assert calls == []


def test_a_busy_gather_of_zero_keeps_the_relay_listening(relay_in_thread):
    # Polling without a wait would claim in a loop: with no busy gather, NOTIFY stays the wake-up.
    relay = relay_in_thread(gather=0.0, gather_busy=0.0)
    listening(relay)
    calls = recording(relay)
    for _ in range(3):
        ids = broker.fill_outbox(5)
        notify()
        assert published_soon(ids, within=5)
    assert calls == []


def test_a_batch_of_one_row_makes_the_busy_relay_listen_again_at_once(relay_in_thread):
    # A long busy gather: listening again right after a batch of one row, not after the next
    # (empty) claim a busy gather later.
    relay = relay_in_thread(gather_busy=3.0)
    listening(relay)
    calls = recording(relay)
    make_busy()
    broker.wait_for(lambda: calls == [False], timeout=5, message="UNLISTEN")
    one = broker.fill_outbox(1)  # claimed by the relay's next poll, alone
    assert published_soon(one, within=6)
    published = time.monotonic()
    broker.wait_for(lambda: calls == [False, True], timeout=6, message="LISTEN again")
    assert time.monotonic() - published < 1.5


def test_a_scheduled_send_committed_as_the_relay_listens_again_leaves_on_time(relay_in_thread):
    relay = relay_in_thread()
    listening(relay)
    scheduled: list[str] = []
    committed: list[float] = []

    def commit():
        # As the relay starts listening again, two transactions commit that nobody hears: a row due
        # now (the claim after the LISTEN takes it alone) and a scheduled send due in a second,
        # whose NOTIFY carried its time. With a 30 s poll, only the next due time read from the
        # table wakes the relay for it.
        committed.append(time.monotonic())
        broker.fill_outbox(1)
        scheduled.extend(broker.fill_outbox(1, not_before_sql="now() + interval '1 second'"))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_notify(%s, extract(epoch FROM now() + interval '1 second')::text)",
                [settings.OUTBOX_NOTIFY_CHANNEL],
            )

    recording(relay, before_listening_again=commit)
    make_busy()
    broker.wait_for(lambda: scheduled, timeout=5, message="the relay listening again")
    assert published_soon(scheduled, within=4)
    assert time.monotonic() - committed[0] >= 0.95  # not before it was due


@pytest.mark.parametrize("batch_size", [100, 5], ids=["a batch", "a full batch"])
def test_a_batch_the_broker_does_not_confirm_is_not_load(relay_in_thread, monkeypatch, batch_size):
    relay = relay_in_thread(gather_busy=0.2, batch_size=batch_size)
    listening(relay)
    calls = recording(relay)
    nack_everything(relay, monkeypatch)
    ids = broker.fill_outbox(5)
    notify()
    broker.wait_for(
        lambda: all(row.attempts for row in OutboxEvent.objects.filter(id__in=ids)), timeout=5, message="tried"
    )
    time.sleep(1.0)
    # Claimed five, confirmed none: the relay keeps listening, and tries again at the quiet pace
    # (a full batch too: it does not loop at once).
    assert calls == []
    assert max(OutboxEvent.objects.filter(id__in=ids).values_list("attempts", flat=True)) <= 2


def test_a_full_batch_the_broker_confirmed_loops_at_once(relay_in_thread):
    # Batches of 5, a busy gather of 3 s: 12 rows go in three claims back to back, not 3 s apart.
    relay = relay_in_thread(batch_size=5, gather_busy=3.0)
    listening(relay)
    ids = broker.fill_outbox(12)
    notify()
    assert published_soon(ids, within=2)


def test_a_busy_relay_whose_batch_is_not_confirmed_retries_once_at_once_then_at_the_quiet_pace(
    relay_in_thread, monkeypatch
):
    relay = relay_in_thread(gather_busy=0.2)
    listening(relay)
    calls = recording(relay)
    make_busy()
    broker.wait_for(lambda: calls == [False], timeout=5, message="UNLISTEN")
    nack_everything(relay, monkeypatch)
    ids = broker.fill_outbox(5)  # the busy relay's next claim takes them, without a NOTIFY
    broker.wait_for(lambda: calls == [False, True], timeout=5, message="LISTEN again")
    time.sleep(1.0)
    # Tried by the busy claim, once more by the claim after the LISTEN, then only on a NOTIFY or
    # the (30 s) poll: not every busy gather.
    assert max(OutboxEvent.objects.filter(id__in=ids).values_list("attempts", flat=True)) <= 2
    assert calls == [False, True]
