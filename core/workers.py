"""What every long-running worker shares: reconnect backoff, outage logging, stopping, and the
loop around them (`ReconnectingWorker`)."""

import contextlib
import os
import random
import select
import signal
import time
from collections.abc import Callable

import psycopg2
import structlog
from pika.exceptions import AMQPError

log = structlog.get_logger(__name__)


class Backoff:
    """Capped exponential backoff with equal jitter: a wait between half and all of 0.5 s, 1 s,
    2 s … up to `cap`; reset after a success. The jitter keeps workers that lost the same
    dependency at the same moment from all coming back at the same moment."""

    def __init__(self, *, initial: float = 0.5, cap: float = 30.0, jitter: Callable[[], float] = random.random):
        self.initial, self.cap, self.current = initial, cap, initial
        self._jitter = jitter  # a number from 0 to 1

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.cap)
        return delay / 2 + self._jitter() * delay / 2

    def reset(self) -> None:
        self.current = self.initial


class Outages:
    """Log each outage of a dependency once when it starts and once when it ends."""

    def __init__(self, health, failures=None) -> None:
        self._since: dict[str, float] = {}
        self._health = health
        self._failures = failures  # a Prometheus counter with a `reason` label, or None

    def down(self, dependency: str, error: Exception | str) -> None:
        self._health.set(dependency, False)
        if self._failures is not None:
            self._failures.labels(reason=f"{dependency}_unavailable").inc()
        if dependency not in self._since:
            self._since[dependency] = time.monotonic()
            log.warning(f"{dependency}_unavailable", error=str(error))

    def up(self, dependency: str) -> None:
        self._health.set(dependency, True)
        started = self._since.pop(dependency, None)
        if started is not None:
            log.info(f"{dependency}_recovered", outage_seconds=round(time.monotonic() - started, 1))


class StopSignal:
    """SIGTERM/SIGINT set a flag and wake whatever waits on `fd` (a self-pipe), so a worker
    blocked in select() or an ioloop stops at once instead of at its next timeout."""

    def __init__(self):
        self.stopping = False
        self.fd, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.set())
        signal.signal(signal.SIGINT, lambda *_: self.set())

    def set(self) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):  # the pipe is full: it is awake anyway
            os.write(self._write, b"x")

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if a stop arrives."""
        select.select([self.fd], [], [], seconds)


class StoppableWorker:
    """What every worker process shares about stopping: SIGTERM/SIGINT set the stop signal."""

    def __init__(self):
        self._stop = StopSignal()

    def install_signal_handlers(self) -> None:
        self._stop.install()

    def stop(self) -> None:
        self._stop.set()

    @property
    def _stopping(self) -> bool:
        return self._stop.stopping


# What ends a round of work as an outage of a dependency, not as a crash.
POSTGRES_OUTAGE = (psycopg2.OperationalError, psycopg2.InterfaceError)
BROKER_OUTAGE = (AMQPError,)


class ReconnectingWorker(StoppableWorker):
    """The loop every worker process runs: connect to Postgres and the broker, work until
    stopped; on an outage of either, report it (Outages), let go of what it broke, wait a capped,
    jittered backoff and connect again. Any other exception is a bug and is not caught.

    A worker fills in the hooks: `open_postgres`, `open_broker`, `work`, `disconnect`, `close`;
    `name` names its `<name>_started` and `<name>_stopped` events.
    """

    name: str
    uses_broker = True  # False: a worker of Postgres alone (no broker step, no rabbitmq readiness)
    broker_outage: tuple[type[BaseException], ...] = BROKER_OUTAGE

    def __init__(self, health, failures=None):
        super().__init__()
        self.health = health
        self.outages = Outages(health, failures)

    def run(self) -> int:
        """Work until stopped (SIGTERM), reconnecting on its own. Returns the exit code: 0."""
        worker_log = structlog.get_logger(type(self).__module__)
        backoff = Backoff()
        worker_log.info(f"{self.name}_started", **self.started_fields())
        while not self._stopping:
            self.health.tick()
            lost = None
            try:
                self.open_postgres()
                self.outages.up("postgres")
                if self.uses_broker:
                    self.open_broker()
                    self.outages.up("rabbitmq")
                backoff.reset()
                self.work()
            except POSTGRES_OUTAGE as exc:
                lost = "postgres"
                self.outages.down(lost, exc)
            except self.broker_outage as exc:  # any broker error is an outage, never a crash
                lost = "rabbitmq"
                self.outages.down(lost, exc)
            self.disconnect(lost)
            if not self._stopping:
                self._stop.sleep(backoff.next())
        self.close()
        worker_log.info(f"{self.name}_stopped")
        return 0

    # Hooks -----------------------------------------------------------------------------------

    def started_fields(self) -> dict:
        """What the started event says about the worker's configuration."""
        return {}

    def open_postgres(self) -> None:
        """Connect to Postgres, or check the connection in hand; raises on an outage."""

    def open_broker(self) -> None:
        """Connect to the broker, unless connected; raises on an outage."""

    def work(self) -> None:
        """Work until stopped (then finish or give back what is in hand); raises on an outage."""
        raise NotImplementedError

    def disconnect(self, lost: str | None) -> None:
        """After each round of work: let go of what should not outlive it. `lost` is the
        dependency whose outage ended the round ("postgres" or "rabbitmq"), None if `work` returned."""

    def close(self) -> None:
        """Once stopped: release everything."""
