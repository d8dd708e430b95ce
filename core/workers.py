"""What every long-running worker shares: reconnect backoff, outage logging, stopping."""

import os
import select
import signal
import time

import structlog

log = structlog.get_logger(__name__)


class Backoff:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s … up to `cap`; reset after a success."""

    def __init__(self, *, initial: float = 0.5, cap: float = 30.0):
        self.initial, self.cap, self.current = initial, cap, initial

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.initial


class Outages:
    """Log each outage of a dependency once when it starts and once when it ends."""

    def __init__(self, health, failures=None):
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
        try:
            os.write(self._write, b"x")
        except OSError:  # the pipe is full: it is awake anyway
            pass

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
