import psycopg2
import pytest
from pika.exceptions import AMQPConnectionError

from core.worker_http import Health
from core.workers import Backoff, ReconnectingWorker


def test_backoff_waits_between_half_and_all_of_each_doubled_step_up_to_the_cap():
    low, high = Backoff(initial=0.5, cap=4, jitter=lambda: 0.0), Backoff(initial=0.5, cap=4, jitter=lambda: 1.0)
    assert [low.next() for _ in range(6)] == [0.25, 0.5, 1, 2, 2, 2]
    assert [high.next() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    low.reset()
    assert low.next() == 0.25
    assert all(0.25 <= Backoff().next() <= 0.5 for _ in range(100))


class Scripted(ReconnectingWorker):
    """Each round raises the next of `failures` (None: work until stopped), and records the hooks."""

    name = "scripted"

    def __init__(self, failures):
        super().__init__(Health())
        self.failures, self.calls = list(failures), []
        self._stop.sleep = lambda seconds: self.calls.append("sleep")

    def open_postgres(self):
        self.calls.append("open_postgres")
        if self.failures and isinstance(self.failures[0], psycopg2.Error):
            raise self.failures.pop(0)

    def open_broker(self):
        self.calls.append("open_broker")

    def work(self):
        self.calls.append("work")
        failure = self.failures.pop(0)
        if failure is None:
            self.stop()
        else:
            raise failure

    def disconnect(self, lost):
        self.calls.append(f"disconnect {lost}")

    def close(self):
        self.calls.append("close")


def test_the_loop_reports_each_outage_lets_go_of_what_it_broke_and_comes_back():
    worker = Scripted([psycopg2.OperationalError("down"), AMQPConnectionError("closed"), None])
    assert worker.run() == 0
    assert worker.calls == [
        "open_postgres",
        "disconnect postgres",
        "sleep",
        "open_postgres",
        "open_broker",
        "work",
        "disconnect rabbitmq",
        "sleep",
        "open_postgres",
        "open_broker",
        "work",
        "disconnect None",
        "close",
    ]
    assert worker.health.dependencies == {"postgres": True, "rabbitmq": True}


def test_a_bug_is_not_an_outage():
    worker = Scripted([KeyError("bug")])
    with pytest.raises(KeyError):
        worker.run()
    assert "disconnect None" not in worker.calls and "close" not in worker.calls
